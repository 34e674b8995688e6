import dataclasses
from typing import Literal

import pytest

from bench.config import (
    ConfigError,
    TrainConfig,
    as_dict,
    build_section,
    keyed_when_set,
    parse_overrides,
    parse_value,
    unkeyed,
)

SECTIONS = {"train": TrainConfig}


@pytest.mark.parametrize(
    ("text", "hint", "expected"),
    [
        ("3", int, 3),
        ("1e-3", float, 1e-3),
        ("true", bool, True),
        ("off", bool, False),
        ("b", Literal["a", "b"], "b"),
        ("none", int | None, None),
        ("4", int | None, 4),
        ("1,2,3", tuple[int, ...], (1, 2, 3)),
    ],
)
def test_parse_value(text, hint, expected):
    assert parse_value(text, hint, "k") == expected


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr=abc", "train.lr='abc' is not a number"),
        ("train.epochs=1.5", "train.epochs='1.5' is not an integer"),
        ("train.nope=1", "unknown key 'nope' of train"),
        ("no.such.key=1", "unknown section 'no'"),
        ("train.amp=fp8", "allowed: off, bf16"),
        ("trainlr", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_item(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_overrides([item], SECTIONS)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["train.lrr=1"], SECTIONS)
    assert "did you mean 'lr'" in str(err.value)
    assert "epochs" in str(err.value)


def test_build_section_applies_defaults_then_overrides_and_validates():
    overrides = parse_overrides(["train.lr=0.5"], SECTIONS)
    cfg = build_section(TrainConfig, "train", {"epochs": 3, "not_a_field": 1}, overrides)
    assert (cfg.epochs, cfg.lr) == (3, 0.5)
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        build_section(TrainConfig, "train", {}, parse_overrides(["train.epochs=0"], SECTIONS))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "infinity"])
def test_a_float_from_the_command_line_must_be_finite(text):
    with pytest.raises(ConfigError, match=f"train.lr='{text}' is not a finite number"):
        parse_value(text, float, "train.lr")
    with pytest.raises(ConfigError, match=f"train.grad_clip='{text}' is not a finite number"):
        parse_overrides([f"train.grad_clip={text}"], SECTIONS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": float("nan")}, "TrainConfig.lr must be finite, got nan"),
        ({"head_lr": float("inf")}, "TrainConfig.head_lr must be finite, got inf"),
        ({"weight_decay": float("nan")}, "TrainConfig.weight_decay must be finite, got nan"),
        ({"grad_clip": float("inf")}, "TrainConfig.grad_clip must be finite, got inf"),
    ],
)
def test_a_validated_float_must_be_finite(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_every_float_a_preset_gives_a_section_must_be_finite():
    """Presets and method defaults reach a section without parse_value; a section whose own
    validation says nothing of a float (a task's noise) still refuses a non-finite one."""
    from bench.tasks.ave import AveConfig

    with pytest.raises(ConfigError, match=r"ave\.noise=inf is not a finite number"):
        build_section(AveConfig, "ave", {"noise": float("inf")}, [])
    with pytest.raises(ConfigError, match=r"train\.lr=nan is not a finite number"):
        build_section(TrainConfig, "train", {"lr": float("nan")}, [])
    assert build_section(AveConfig, "ave", {"noise": 0.5}, []).noise == 0.5


def test_a_field_keyed_when_set_is_stored_only_off_its_default():
    """Recorded runs keep their configs (and keys) when such fields are added at defaults that
    compute what they computed; a run that sets one is a different run, and says them all."""

    @dataclasses.dataclass
    class Section:
        kept: int = 1
        added: str = keyed_when_set("old")
        its_parameter: float = keyed_when_set(0.5)
        read_only: int = unkeyed(0)

    assert as_dict(Section()) == {"kept": 1}
    assert as_dict(Section(added="new", read_only=3)) == {"kept": 1, "added": "new", "its_parameter": 0.5}
    assert as_dict(Section(its_parameter=0.25)) == {"kept": 1, "added": "old", "its_parameter": 0.25}
