"""HAN (bench.tasks.heads.han) against the released AVVP-ECCV20 code at fde5611: its parameter count,
its forward re-stated independently from nets/net_audiovisual.py, the loss of main_avvp.py, and the
`avvp.head` switch through the task and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tolerances import FLOAT64, U32, gamma

from bench.cli import main
from bench.config import as_dict
from bench.registry import get_task
from bench.results import ResultsStore
from bench.tasks.avvp import AvvpConfig, AvvpHead
from bench.tasks.base import TaskModel
from bench.tasks.heads.han import HanHead, HanOutput, han_loss
from mettle_core.interface import AVFeatures

D, FFN, C = 512, 512, 25  # the official d_model, dim_feedforward and LLP's classes


def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


ATTENTION = 4 * D * D + 4 * D  # nn.MultiheadAttention: q, k, v in-projections and the out-projection
LAYER_NORM = 2 * D
FEED_FORWARD_BLOCK = linear(D, FFN) + linear(FFN, D)
HAN_LAYER = 2 * ATTENTION + FEED_FORWARD_BLOCK + 2 * LAYER_NORM  # self_attn, cm_attn, linear1/2, norm1/2
TRANSFORMER_LAYER = ATTENTION + FEED_FORWARD_BLOCK + 2 * LAYER_NORM  # nn.TransformerEncoderLayer; CMTLayer too


def official_mmil_net(audio: int, visual: int, clip: int) -> int:
    """Every parameter of the official MMIL_Net built at these input widths."""
    return (
        linear(audio, D)  # fc_a
        + linear(visual, D)  # fc_v
        + linear(clip, D)  # fc_st (the 3D stream)
        + linear(2 * D, D)  # fc_fusion
        + 3 * linear(D, C)  # fc_prob, fc_frame_att, fc_av_att
        + 2 * TRANSFORMER_LAYER  # audio_encoder, visual_encoder: never called
        + TRANSFORMER_LAYER
        + 2 * LAYER_NORM  # cmt_encoder (a CMTLayer and the Encoder's norm1/2): never called
        + HAN_LAYER
        + 2 * LAYER_NORM  # hat_encoder: its HANLayer, and its norm1/2, never applied (norm=None)
    )


def not_built_here(clip: int) -> int:
    """The 3D stream and its fusion (absent here), and what the official forward never calls."""
    return linear(clip, D) + linear(2 * D, D) + 3 * TRANSFORMER_LAYER + 4 * LAYER_NORM


@pytest.mark.parametrize(
    ("audio", "visual", "expected"),
    [(768, 1536, 3_847_755), (128, 2048, 3_782_219), (128, 128, 2_799_179), (12, 10, 2_679_371)],
)
def test_parameters_are_the_official_ones_that_reach_the_loss(audio: int, visual: int, expected: int) -> None:
    """Paper widths (HTS-AT 768, Swin-V2-L 1536), the official ones, the tiny/smoke towers' and
    the fake encoder's: official MMIL_Net minus the 3D stream and the never-called modules."""
    head = HanHead(audio, visual, C)
    count = sum(p.numel() for p in head.parameters())
    assert count == official_mmil_net(audio, visual, clip=512) - not_built_here(clip=512) == expected
    assert official_mmil_net(128, 2048, clip=512) == 9_307_723  # the released model, whole


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def reference(p: dict[str, torch.Tensor], audio: torch.Tensor, visual: torch.Tensor) -> dict[str, torch.Tensor]:
    """MMIL_Net.forward in evaluation mode, one video at a time, from the weights by name
    (`p`, HanHead's names): single-head scaled dot-product attention written out."""

    def attend(name: str, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        w, b = p[f"hybrid.{name}.in_proj_weight"], p[f"hybrid.{name}.in_proj_bias"]
        q, k, v = query @ w[:D].T + b[:D], memory @ w[D : 2 * D].T + b[D : 2 * D], memory @ w[2 * D :].T + b[2 * D :]
        weights = torch.exp(q @ k.T / math.sqrt(D))
        context = (weights / weights.sum(-1, keepdim=True)) @ v
        return context @ p[f"hybrid.{name}.out_proj.weight"].T + p[f"hybrid.{name}.out_proj.bias"]

    def han_layer(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        x = layer_norm(
            x + attend("cm_attn", x, other) + attend("self_attn", x, x),
            p["hybrid.norm1.weight"],
            p["hybrid.norm1.bias"],
        )
        hidden = torch.clamp(x @ p["hybrid.linear1.weight"].T + p["hybrid.linear1.bias"], min=0)
        x = x + hidden @ p["hybrid.linear2.weight"].T + p["hybrid.linear2.bias"]
        return layer_norm(x, p["hybrid.norm2.weight"], p["hybrid.norm2.bias"])

    def fc(name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    outputs: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("video", "audio", "visual", "video_audio", "video_visual")
    }
    for a_in, v_in in zip(audio, visual, strict=True):
        a, v = fc("fc_a", a_in), fc("fc_v", v_in)  # [T, D]
        a, v = han_layer(a, v), han_layer(v, a)
        prob = {m: 1 / (1 + torch.exp(-fc("fc_prob", x))) for m, x in (("audio", a), ("visual", v))}  # [T, C]
        time_w = {m: torch.softmax(fc("fc_frame_att", x), dim=0) for m, x in (("audio", a), ("visual", v))}
        av_logits = torch.stack([fc("fc_av_att", a), fc("fc_av_att", v)])  # [2, T, C]
        av_w = dict(zip(("audio", "visual"), torch.softmax(av_logits, dim=0), strict=True))
        for m in ("audio", "visual"):
            outputs[m].append(prob[m])
            outputs[f"video_{m}"].append((time_w[m] * prob[m]).sum(0))
        outputs["video"].append(sum((time_w[m] * prob[m] * av_w[m]).sum(0) for m in ("audio", "visual")))
    return {k: torch.stack(v) for k, v in outputs.items()}


def test_forward_matches_the_official_definition_in_float64() -> None:
    torch.manual_seed(0)
    head = HanHead(12, 10, C).double().eval()  # eval: dropout off, as at test time
    with torch.no_grad():
        for param in head.parameters():  # off the default init: norms and biases must matter too
            param.copy_(torch.randn_like(param) * 0.2)
    audio, visual = torch.randn(3, 10, 12, dtype=torch.float64), torch.randn(3, 10, 10, dtype=torch.float64)
    out = head(AVFeatures(audio, visual))
    expected = reference(dict(head.named_parameters()), audio, visual)
    assert isinstance(out, HanOutput) and set(out) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, **FLOAT64, msg=key)
    assert (out["video"] - out["video_audio"]).abs().max() > 1e-3  # the modality weights are not trivial


def test_loss_on_a_hand_computed_case() -> None:
    """One video, two classes, the first present: audio guided by the labels as they are, visual
    by 0.95 / 0.05, every probability clamped at 1e-7 (a present class at 0 costs -ln 1e-7)."""
    output = HanOutput(
        video=torch.tensor([[0.8, 0.3]], dtype=torch.float64),
        video_audio=torch.tensor([[0.0, 0.1]], dtype=torch.float64),
        video_visual=torch.tensor([[0.9, 0.2]], dtype=torch.float64),
    )
    label = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ln = math.log
    audio = (-ln(1e-7) - ln(0.9)) / 2
    visual = (-(0.95 * ln(0.9) + 0.05 * ln(0.1)) - (0.05 * ln(0.2) + 0.95 * ln(0.8))) / 2
    video = (-ln(0.8) - ln(0.7)) / 2
    assert han_loss(output, label).item() == pytest.approx(audio + visual + video, rel=1e-12)
    single = HanOutput({key: value.float() for key, value in output.items()})  # as a run computes it
    got = get_task("avvp").loss(single, {"label": label.float()}).item()
    assert got == pytest.approx(audio + visual + video, rel=0, abs=float32_han_bound(audio + visual + video))


def float32_han_bound(total: float) -> float:
    """A first-order bound on the float32 loss of the case above. Each term is c * -ln(x): x
    carries its input's rounding (relative u for a probability p or the clamp 1e-7; for 1 - p,
    u * p / (1 - p) from p and u from the subtraction), the log at most 4 ulp of its value
    (vectorised logs are within 1-4 ulp), the product and BCE's difference 2 u more, and the
    smoothed label c (0.95 / 0.05 from 0.9 * label + 0.1 * 0.5) 3 u absolute. Each BCE halves
    its two terms; the three BCEs' two-term means and their sum add gamma(4) of the total."""
    u = U32

    def term(c: float, x: float, dx: float) -> float:
        log = abs(math.log(x))
        return c * (dx + 6 * u * log) + 3 * u * log

    def one_minus(p: float) -> float:
        return u * p / (1 - p) + u

    terms = [
        term(1.0, 1e-7, u), term(1.0, 0.9, one_minus(0.1)),  # audio: labels (1, 0) on (0.0 -> 1e-7, 0.1)
        term(0.95, 0.9, u), term(0.05, 0.1, one_minus(0.9)),  # visual, class 1 at 0.9
        term(0.05, 0.2, u), term(0.95, 0.8, one_minus(0.2)),  # visual, class 2 at 0.2
        term(1.0, 0.8, u), term(1.0, 0.7, one_minus(0.3)),  # video: labels (1, 0) on (0.8, 0.3)
    ]  # fmt: skip
    return sum(terms) / 2 + gamma(4) * total


def test_the_switch_builds_han_trains_all_of_it_and_keeps_the_harness_default(encoder, shape) -> None:  # noqa: ANN001
    """head=han: HAN's loss reaches every parameter of it; the predictions are what the metric
    thresholds. The default stays the harness head with its plain video BCE and its run key."""
    task = get_task("avvp")
    cfg = AvvpConfig(num_train=4, num_val=2, num_test=2, head="han")
    model = TaskModel(encoder, task.head(cfg, encoder))
    assert isinstance(model.head, HanHead)
    batch = task.synthetic(cfg, shape)["val"].batches(2)[0]
    out = model(batch["audio"], batch["visual"])
    task.loss(out, batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    preds = task.predictions(out, batch)
    assert torch.equal(preds["audio_prob"], out["audio"].detach().transpose(1, 2))
    assert torch.equal(preds["video_prob"], out["video"].detach())
    assert set(task.score(cfg, preds)) == set(task.metric_keys)

    assert isinstance(task.head(AvvpConfig(), encoder), AvvpHead)
    plain = {"video": torch.tensor([[0.8, 0.3]]), "audio": torch.zeros(1, 1, 2), "visual": torch.zeros(1, 1, 2)}
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    float32_bce = gamma(2 + 8)  # two non-negative float32 terms, each within a few roundings, and their mean
    assert task.loss(plain, {"label": torch.tensor([[1.0, 0.0]])}).item() == pytest.approx(expected, rel=float32_bce)
    assert "head" not in as_dict(AvvpConfig()) and as_dict(cfg)["head"] == "han"


def test_an_unknown_head_is_named() -> None:
    with pytest.raises(ValueError, match=r"head.*'mgn'.*harness, han"):
        AvvpConfig(head="mgn")  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_smoke_run_with_the_han_head_records_it(tmp_path: Path) -> None:
    run = ["run", "--methods", "frozen", "--tasks", "avvp", "--preset", "smoke", "--device", "cpu"]
    assert main([*run, "--set", "avvp.head=han", "--set", "measure.enabled=false", "--out", str(tmp_path)]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    assert record["status"] == "ok" and record["config"]["task"]["head"] == "han"
