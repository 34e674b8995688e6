"""LCD pieces on their own: the memory-lean attention, the batched stage form against the
per-layer one, recomputation, variants, layer selection, config checks."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from mettle_helpers import saved_bytes
from tolerances import FLOAT64

from mettle_core import LCD, MettleConfig, meta_attention, select_layers


def test_meta_attention_matches_softmax_attention_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(3, 10, 8, dtype=torch.float64, generator=g)
    ref = torch.softmax(q @ x.transpose(1, 2) / 8**0.5, dim=-1) @ x
    torch.testing.assert_close(meta_attention(q, x), ref)
    assert torch.autograd.gradcheck(lambda q: meta_attention(q, x), (q,))


def test_meta_attention_broadcasts_one_query_set_over_frames() -> None:
    """Queries [n, 1, K, D] over frames [n, N, L, D]: the same as expanding them, gradient summed."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 1, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(meta_attention(q, x), meta_attention(q.expand(-1, 5, -1, -1), x))
    assert torch.autograd.gradcheck(lambda q: meta_attention(q, x), (q,))


def reference_layer(lcd: LCD, j: int, x: torch.Tensor) -> torch.Tensor:
    """Layer j of a parallel attention LCD written with plain torch ops, independently of
    mettle_core: LayerNorm(M + read + gate * up(gelu(down(read))))."""
    m = lcd.meta[j].expand(x.shape[0], -1, -1)
    read = F.scaled_dot_product_attention(m, x, x)
    adapted = F.gelu(read @ lcd.down_weight[j] + lcd.down_bias[j]) @ lcd.up_weight[j] + lcd.up_bias[j]
    return F.layer_norm(m + read + lcd.gate[j] * adapted, (x.shape[-1],), lcd.norm_weight[j], lcd.norm_bias[j])


def stage_lcd(**overrides: object) -> LCD:
    torch.manual_seed(0)
    lcd = LCD(16, num_tokens=4, layers=3, **overrides)  # type: ignore[arg-type]
    with torch.no_grad():
        if hasattr(lcd, "gate"):
            lcd.gate.uniform_(0.2, 0.8)  # open, and different per layer
        lcd.norm_weight.uniform_(0.5, 1.5)
    return lcd


def frozen_stage(layers: int = 3, frames: int = 5, tokens: int = 20, dim: int = 16) -> torch.Tensor:
    return torch.randn(layers, frames, tokens, dim, generator=torch.Generator().manual_seed(1))


def outputs_and_grads(lcd: LCD, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lcd.zero_grad(set_to_none=True)
    out = lcd(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in lcd.named_parameters() if p.grad is not None}


def test_the_stage_form_computes_each_layer_as_the_paper_reads_it() -> None:
    """In float64, where only the order of the sums differs (2e-15 apart here)."""
    lcd, x = stage_lcd().double(), frozen_stage().double()
    out = lcd(x)
    assert out.shape == (3, 5, 4, 16)
    for j in range(3):
        torch.testing.assert_close(out[j], reference_layer(lcd, j, x[j]), **FLOAT64)


@pytest.mark.parametrize("preserve", ["attention", "lowrank"])
@pytest.mark.parametrize("order", ["parallel", "series"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "keep"])
def test_batched_and_per_layer_forms_agree_in_output_and_gradients(preserve: str, order: str, recompute: bool) -> None:
    """In float64, where only the order of the sums differs (1e-15 apart here)."""
    x = frozen_stage().double()
    batched = stage_lcd(preserve=preserve, order=order, recompute=recompute).double()
    per_layer = stage_lcd(preserve=preserve, order=order, recompute=recompute, batched=False).double()
    out_b, grads_b = outputs_and_grads(batched, x)
    out_p, grads_p = outputs_and_grads(per_layer, x)
    torch.testing.assert_close(out_b, out_p, **FLOAT64)
    assert grads_b.keys() == grads_p.keys() == dict(batched.named_parameters()).keys()
    for name, grad in grads_b.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads_p[name], **FLOAT64, msg=name)


def test_recompute_saves_only_the_frozen_tokens_and_gives_the_same_gradients() -> None:
    x = frozen_stage()
    kept, recomputed = stage_lcd(recompute=False), stage_lcd()
    assert saved_bytes(recomputed, lambda: recomputed(x)) == x.numel() * 4
    # without recomputation: per layer and frame, [K, D] x 4 (bottleneck input, adapt output, norm input
    # and output), [K, D/8] x 2 (GELU input and output), [K] x 2 (norm statistics)
    assert saved_bytes(kept, lambda: kept(x)) == x.numel() * 4 + 3 * 5 * 4 * (4 * 16 + 2 * 2 + 2) * 4
    # the gradients in float64, where replaying the forward pass can only reorder sums
    out_k, grads_k = outputs_and_grads(kept.double(), x.double())
    out_r, grads_r = outputs_and_grads(recomputed.double(), x.double())
    assert torch.equal(out_k, out_r)
    for name, grad in grads_k.items():
        torch.testing.assert_close(grad, grads_r[name], **FLOAT64, msg=name)


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "keep"])
def test_bf16_features_are_saved_as_bf16_only(recompute: bool) -> None:
    """With bf16 features LCD keeps the bf16 tensor, never an fp32 copy."""
    lcd = LCD(16, num_tokens=4, layers=2, adapt=False, recompute=recompute)
    x = torch.randn(2, 3, 50, 16)
    full = saved_bytes(lcd, lambda: lcd(x))
    half = saved_bytes(lcd, lambda: lcd(x.bfloat16()))
    assert full - half == x.numel() * 2


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "keep"])
def test_lcd_trains_under_autocast(recompute: bool) -> None:
    """Mixed-precision training (the GPU runs) must not break the hand-written backwards; the
    recomputation replays the forward pass's autocast state."""
    lcd = LCD(16, num_tokens=4, layers=2, recompute=recompute)
    with torch.no_grad():
        lcd.gate.fill_(0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lcd(torch.randn(2, 2, 50, 16).bfloat16())
    (out.float() * torch.randn(out.shape)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lcd.parameters())


@pytest.mark.parametrize("preserve", ["attention", "lowrank"])
@pytest.mark.parametrize("adapt", [True, False])
def test_lcd_output_shape(preserve: str, adapt: bool) -> None:
    lcd = LCD(32, num_tokens=5, layers=2, preserve=preserve, adapt=adapt)  # type: ignore[arg-type]
    assert lcd(torch.randn(2, 6, 17, 32)).shape == (2, 6, 5, 32)


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_meta_tokens_start_at_the_requested_scale(std: float) -> None:
    meta = LCD(64, num_tokens=64, layers=4, init_std=std).meta
    assert meta.abs().max() <= 2 * std and meta.std().item() == pytest.approx(0.88 * std, rel=0.05)


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
        ({"width": "layer"}, "width='layer' is not allowed (allowed: stage, block)"),
        ({"pool": "max"}, "pool='max' is not allowed (allowed: mean, attention, concat)"),
        ({"adapt_order": "before"}, "adapt_order='before' is not allowed (allowed: parallel, series)"),
        ({"key_norm": "l2"}, "key_norm='l2' is not allowed (allowed: layernorm, none)"),
        ({"decay": "none"}, "decay='none' is not allowed (allowed: projections, all)"),
        ({"mti": True}, "mti=True is not allowed (allowed: attention, film, off)"),
        ({"meta_init_std": 0.0}, "meta_init_std=0.0 must be a positive number"),
        ({"no_decay_lr_scale": -1.0}, "no_decay_lr_scale=-1.0 must be a positive number"),
        ({"meta_init_std": "big"}, "meta_init_std='big' must be a positive number"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MettleConfig(**overrides)  # type: ignore[arg-type]
