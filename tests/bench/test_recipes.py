"""Official recipes (bench.recipe, bench/recipes/*.toml): every shipped file parses, names its
source and sets only known keys; `--recipe official` applies a method's recipe to the resolved
run before `--set`, which wins; a missing recipe, a bad key or value and a recipe for another
task are errors naming the file; the record keeps the recipe's name and hash, the run key only
the overrides it applies, and the tables show it.

The mechanism is tested on recipe files written in tmp_path; the published heads (`head` of a
task's config) arrive in their own change: where this version's task config lacks `head`, a
shipped recipe is resolved from a copy without that line, and resolving the shipped file itself
is an error naming it (that test skips once the field is there)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

import bench.recipe
from bench.cli import main
from bench.config import ConfigError, TrainConfig
from bench.jobs import job_key
from bench.plan import RunPlan, load_plan, resolve
from bench.recipe import RECIPES_DIR, load_recipe, shipped_names
from bench.registry import get_method, task_names
from bench.report import paper_table, summarize

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
ALLOWED_TASK_KEYS = {"head", "segments"}  # the published head, and the segments per video
HEADS = {"ave": {"harness", "cmbs"}, "avvp": {"harness", "han"}, "avs_s4": {"harness", "avsbench"},
         "avs_ms3": {"harness", "avsbench"}}  # fmt: skip
COMMIT = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40} ")  # owner/repo@<40-hex commit> then the file and flags
RECIPE = """\
task = "ave"
method = "dgsct"
source = "owner/repo@0000000000000000000000000000000000000000 train.sh: --lr 5e-4"
notes = ["a note"]

[train]
optimizer = "adam"
lr = 5e-4
head_lr = 5e-6
weight_decay = 0.0
schedule = "step"
step_size = 3
gamma = 0.35
accumulate = 2
batch_size = 4
epochs = 7
patience = 20

[ave]
segments = 4

[dgsct]
num_tokens = 16
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    """An empty recipe folder that `--recipe` reads instead of bench/recipes."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    monkeypatch.setattr(bench.recipe, "RECIPES_DIR", folder)
    return folder


@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_recipe_parses_names_its_source_and_sets_known_keys(name):
    path = RECIPES_DIR / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    recipe = load_recipe(path)
    assert recipe.name == name and recipe.task in task_names()
    if recipe.method is not None:  # a method's recipe is found by its name
        assert name == f"{recipe.method}_{recipe.task}"
    ours = recipe.source.startswith("ours: ")
    assert ours or COMMIT.match(recipe.source), recipe.source
    assert ours == (recipe.method == "mettle")  # Mettle's paper releases no recipe: its recipes are ours
    assert set(data["train"]) <= TRAIN_FIELDS
    assert {"optimizer", "lr", "head_lr", "schedule", "accumulate", "batch_size", "epochs", "patience"} <= set(
        data["train"]
    )
    assert set(data[recipe.task]) <= ALLOWED_TASK_KEYS and data[recipe.task]["head"] in HEADS[recipe.task]
    if recipe.method in data:
        method_fields = {f.name for f in dataclasses.fields(get_method(recipe.method).config_cls)}
        assert set(data[recipe.method]) <= method_fields
    assert set(data) <= {"task", "method", "source", "notes", "train", recipe.task, *filter(None, [recipe.method])}


def test_shipped_recipes_cover_what_the_papers_released():
    assert set(shipped_names()) == {
        "lavish_ave", "lavish_avs_s4",  # LAVisH releases no AVVP or MS3 code
        "dgsct_ave", "dgsct_avs_s4", "dgsct_avs_ms3", "dgsct_avvp",
        "mettle_ave", "mettle_avs_s4", "mettle_avs_ms3", "mettle_avvp",
        "avsbench_avs_s4", "avsbench_avs_ms3", "han_avvp",
    }  # fmt: skip


@pytest.mark.parametrize("name", shipped_names())
def test_a_shipped_recipe_resolves_into_its_values(name, recipes):
    """Every value a shipped recipe sets (its head included) reaches the resolved run."""
    text = (RECIPES_DIR / f"{name}.toml").read_text()
    data = tomllib.loads(text)
    task, method = data["task"], data.get("method")
    (recipes / f"{name}.toml").write_text(text)
    (run,) = resolve(RunPlan([method or "mettle"], [task], "smoke", recipe="official" if method else name))
    assert {k: getattr(run.train, k) for k in data["train"]} == data["train"]
    assert {k: getattr(run.task_cfg, k) for k in data[task]} == data[task]
    assert {k: getattr(run.method_cfg, k) for k in data.get(method, {})} == data.get(method, {})
    assert run.tags == {"recipe": name, "recipe_sha256": hashlib.sha256(text.encode()).hexdigest()}


def test_official_recipe_sets_the_resolved_run_and_set_wins(recipes):
    (recipes / "dgsct_ave.toml").write_text(RECIPE)
    (run,) = resolve(RunPlan(["dgsct"], ["ave"], "smoke", recipe="official"))
    train = run.train
    assert (train.optimizer, train.lr, train.head_lr, train.weight_decay) == ("adam", 5e-4, 5e-6, 0.0)
    assert (train.schedule, train.step_size, train.gamma, train.accumulate) == ("step", 3, 0.35, 2)
    assert (train.batch_size, train.epochs, train.patience) == (4, 7, 20)
    assert run.task_cfg.segments == 4 and run.method_cfg.num_tokens == 16
    flags = ["train.lr=1e-2", "train.epochs=1", "dgsct.num_tokens=4"]
    (run,) = resolve(RunPlan(["dgsct"], ["ave"], "smoke", overrides=flags, recipe="official"))
    assert (run.train.lr, run.train.epochs, run.method_cfg.num_tokens) == (1e-2, 1, 4)
    assert (run.train.head_lr, run.train.accumulate, run.train.patience) == (5e-6, 2, 20)  # the rest stays


def test_a_plan_file_asks_for_the_recipe_and_a_flag_overrides_it(recipes, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('recipe = "official"\n[candidates]\ndgsct = [[]]\n')
    assert load_plan(plan).recipe == "official"
    plan.write_text("recipe = 3\n[candidates]\ndgsct = [[]]\n")
    with pytest.raises(ConfigError, match=r"--plan .*plan\.toml: recipe must be a string"):
        load_plan(plan)


def test_missing_recipes_are_named_by_method_task_and_file(recipes):
    (recipes / "dgsct_ave.toml").write_text(RECIPE)
    with pytest.raises(ConfigError) as err:
        resolve(RunPlan(["dgsct", "frozen"], ["ave", "avvp"], "smoke", recipe="official"))
    message = str(err.value)
    for method, task in (("frozen", "ave"), ("dgsct", "avvp"), ("frozen", "avvp")):
        assert f"no recipe for {method} on {task} (looked for {recipes / f'{method}_{task}.toml'})" in message
    assert "dgsct on ave" not in message


def test_the_shipped_recipes_cover_every_pair_but_lavish_on_avvp_and_ms3():
    """The command for lavish, dgsct and mettle on the four tasks names exactly the two
    pairs no paper released a recipe for."""
    plan = RunPlan(["lavish", "dgsct", "mettle"], ["ave", "avvp", "avs_s4", "avs_ms3"], "smoke", recipe="official")
    with pytest.raises(ConfigError) as err:
        resolve(plan)
    assert re.findall(r"no recipe for (\w+) on (\w+)", str(err.value)) == [("lavish", "avvp"), ("lavish", "avs_ms3")]


def test_cli_exits_2_naming_the_missing_shipped_recipe(capsys):
    code = main(["run", "--methods", "lavish", "--tasks", "avvp", "--preset", "smoke", "--recipe", "official"])
    out = capsys.readouterr()
    assert code == 2
    printed = " ".join((out.out + out.err).split())  # the console wraps long lines
    assert f"no recipe for lavish on avvp (looked for {RECIPES_DIR / 'lavish_avvp.toml'})" in printed


def test_a_named_recipe_is_for_its_task_only(recipes):
    protocol = RECIPE.replace('task = "ave"', 'task = "avvp"').replace('method = "dgsct"\n', "").split("[ave]")[0]
    (recipes / "proto_avvp.toml").write_text(protocol)
    (run,) = resolve(RunPlan(["mettle"], ["avvp"], "smoke", recipe="proto_avvp"))
    assert run.train.epochs == 7 and run.tags["recipe"] == "proto_avvp"
    with pytest.raises(ConfigError, match=r"--recipe proto_avvp: it is for task avvp, not ave"):
        resolve(RunPlan(["mettle"], ["ave"], "smoke", recipe="proto_avvp"))
    with pytest.raises(ConfigError, match=r"--recipe nope: no such recipe \(looked for .*nope\.toml"):
        resolve(RunPlan(["mettle"], ["ave"], "smoke", recipe="nope"))


def test_the_record_keeps_the_recipe_and_the_key_only_its_overrides(recipes):
    path = recipes / "dgsct_ave.toml"
    path.write_text(RECIPE)
    (run,) = resolve(RunPlan(["dgsct"], ["ave"], "smoke", recipe="official"))
    assert run.tags == {"recipe": "dgsct_ave", "recipe_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    same = [f"{o.dotted}={o.value}" for o in load_recipe(path).overrides]
    (by_flags,) = resolve(RunPlan(["dgsct"], ["ave"], "smoke", overrides=same))
    assert job_key(run) == job_key(by_flags) and by_flags.tags == {}
    path.write_text(RECIPE + "# a comment changes the hash, not the run\n")
    (commented,) = resolve(RunPlan(["dgsct"], ["ave"], "smoke", recipe="official"))
    assert job_key(commented) == job_key(run)
    assert commented.tags["recipe_sha256"] != run.tags["recipe_sha256"]


def test_tables_show_the_recipe_of_each_row():
    def record(method: str, seed: int, tags: dict[str, str]) -> dict:
        config = {"train": {"lr": 5e-4 if tags else 1e-3}}
        return {"method": method, "task": "ave", "preset": "smoke", "source": "synthetic", "seed": seed,
                "status": "ok", "config": config, "metrics": {"accuracy": 50.0 + seed}, "efficiency": {},
                "tags": tags}  # fmt: skip

    recipe = {"recipe": "dgsct_ave", "recipe_sha256": "0123456789abcdef" * 4}
    records = [record("dgsct", seed, recipe) for seed in (0, 1)] + [record("lavish", 0, {})]
    table = paper_table(summarize(records)).set_index("method")
    assert table.loc["dgsct", "recipe"] == "dgsct_ave (01234567)"
    assert table.loc["lavish", "recipe"] == ""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("lr = 5e-4", "lrr = 5e-4"), r"dgsct_ave\.toml: train\.lrr: unknown key"),
        (("lr = 5e-4", 'lr = "fast"'), r"dgsct_ave\.toml: train\.lr='fast' is not a number"),
        (('schedule = "step"', 'schedule = "linear"'), r"dgsct_ave\.toml: train\.schedule='linear' is not allowed"),
        (("segments = 4", "num_train = 4"), r"dgsct_ave\.toml: ave\.num_train: a recipe sets only head, segments"),
        (("num_tokens = 16", "tokens = 16"), r"dgsct_ave\.toml: dgsct\.tokens: unknown key"),
        (("[dgsct]", "[lavish]"), r"dgsct_ave\.toml: unknown key or section 'lavish'"),
        (('source = "owner', 'sauce = "owner'), r"dgsct_ave\.toml: `source` must name"),
        (('task = "ave"', 'task = "aev"'), r"dgsct_ave\.toml: task = 'aev' is not a known task"),
        (("[ave]", "[ave\n"), r"dgsct_ave\.toml: "),
    ],
)
def test_a_bad_recipe_names_the_file_and_the_key(recipes, edit, message):
    (recipes / "dgsct_ave.toml").write_text(RECIPE.replace(*edit))
    with pytest.raises(ConfigError, match=message):
        resolve(RunPlan(["dgsct"], ["ave"], "smoke", recipe="official"))


def test_a_recipe_for_another_method_under_a_method_name_is_refused(recipes):
    (recipes / "lavish_ave.toml").write_text(RECIPE.replace("[dgsct]\nnum_tokens = 16\n", ""))
    with pytest.raises(ConfigError, match=r"lavish_ave\.toml: says method 'dgsct', task 'ave'"):
        resolve(RunPlan(["lavish"], ["ave"], "smoke", recipe="official"))


@pytest.mark.slow
def test_run_with_the_official_lavish_recipe_end_to_end(recipes, tmp_path):
    """`bench run --methods lavish --tasks ave --preset smoke --recipe official --set train.epochs=1`,
    on the shipped lavish_ave.toml."""
    text = (RECIPES_DIR / "lavish_ave.toml").read_text()
    (recipes / "lavish_ave.toml").write_text(text)
    out = tmp_path / "rec"
    argv = ["run", "--methods", "lavish", "--tasks", "ave", "--preset", "smoke", "--device", "cpu"]
    assert main([*argv, "--recipe", "official", "--set", "train.epochs=1", "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert record["status"] == "ok"
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert record["tags"] == {"recipe": "lavish_ave", "recipe_sha256": digest}
    train = record["config"]["train"]
    assert (train["epochs"], train["lr"], train["head_lr"], train["accumulate"], train["optimizer"]) == (
        1, 1e-4, 5e-6, 2, "adam"
    )  # fmt: skip
    assert record["config"]["method"]["num_latent"] == 2
    assert f"lavish_ave ({digest[:8]})" in (out / "tables" / "results.md").read_text()
