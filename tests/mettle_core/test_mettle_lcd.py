"""LCD pieces on their own: the memory-lean attention, variants, layer selection, config checks."""

from __future__ import annotations

import re

import pytest
import torch
from mettle_helpers import saved_bytes

from mettle_core import LCD, MettleConfig, meta_attention, select_layers


def test_meta_attention_matches_softmax_attention_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(3, 10, 8, dtype=torch.float64, generator=g)
    ref = torch.softmax(q @ x.transpose(1, 2) / 8**0.5, dim=-1) @ x
    torch.testing.assert_close(meta_attention(q, x), ref)
    assert torch.autograd.gradcheck(lambda q: meta_attention(q, x), (q,))


def test_bf16_features_are_saved_as_bf16_only() -> None:
    """With bf16 features the preservation branch keeps the bf16 tensor, never an fp32 copy."""
    lcd = LCD(16, num_tokens=4, adapt=False)
    x = torch.randn(2, 50, 16)
    full = saved_bytes(lcd, lambda: lcd(x).sum().backward())
    half = saved_bytes(lcd, lambda: lcd(x.bfloat16()).sum().backward())
    assert full - half == x.numel() * 2


def test_lcd_trains_under_autocast() -> None:
    """Mixed-precision training (the GPU runs) must not break the hand-written backward."""
    lcd = LCD(16, num_tokens=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lcd(torch.randn(2, 50, 16).bfloat16())
    (out.float() * torch.randn(out.shape)).sum().backward()
    assert lcd.meta.grad is not None and lcd.meta.grad.abs().sum() > 0


@pytest.mark.parametrize("preserve", ["attention", "lowrank"])
@pytest.mark.parametrize("adapt", [True, False])
def test_lcd_output_shape(preserve: str, adapt: bool) -> None:
    lcd = LCD(32, num_tokens=5, preserve=preserve, adapt=adapt)  # type: ignore[arg-type]
    assert lcd(torch.randn(6, 17, 32)).shape == (6, 5, 32)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, (0, 1, 2, 3, 4)),
        ({"layers": "last_n", "last_n": 2}, (3, 4)),
        ({"layers": "last_n", "last_n": 9}, (0, 1, 2, 3, 4)),
        ({"layers": "every_k", "every_k": 2}, (0, 2, 4)),
        ({"layers": "every_k", "every_k": 3}, (1, 4)),
        ({"aggregate": "last"}, (4,)),
    ],
)
def test_select_layers(overrides: dict[str, object], expected: tuple[int, ...]) -> None:
    assert select_layers(5, MettleConfig(**overrides)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": "first"}, "layers='first' is not allowed (allowed: all, last_n, every_k)"),
        ({"feature_dtype": "fp16"}, "allowed: fp32, bf16"),
        ({"num_tokens": 0}, "num_tokens=0 must be a positive integer"),
        ({"bottleneck_ratio": -2}, "bottleneck_ratio=-2"),
        ({"every_k": 1.5}, "every_k=1.5"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MettleConfig(**overrides)  # type: ignore[arg-type]
