"""DG-SCT's CMBS head for AVE (bench/tasks/heads/cmbs.py), against the released code
(haoyi-duan/DG-SCT at 211fc57: DG-SCT/AVE/nets/net_trans.py TemporalAttention + CMBS,
nets/models.py EncoderLayer / DecoderLayer, main_trans.py's losses and compute_accuracy_supervised):
its parameter count layer by layer, its forward re-stated from the official equations, its loss
and segment decision on hand-computed cases, and the `ave.head` switch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tolerances import FLOAT64

from baselines.dgsct import TemporalAttention
from bench.build import build_model
from bench.cli import main
from bench.config import ConfigError, as_dict, build_section, parse_overrides
from bench.plan import RunPlan, all_sections, resolve
from bench.presets import get_preset
from bench.results import ResultsStore
from bench.tasks.ave import BACKGROUND, NUM_EVENTS, TASK, AveConfig, AveHead
from bench.tasks.heads.cmbs import CmbsHead, CmbsOutput, cmbs_loss, cmbs_segment_classes
from mettle_core.interface import AVFeatures

D, FF, A_W, V_W = 256, 1024, 128, 512  # d_model, feed-forward, a_fc and v_fc outputs


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bi_lstm(n_in: int, hidden: int) -> int:
    """Per direction: weight_ih 4H x I, weight_hh 4H x H, bias_ih and bias_hh 4H each."""
    return 2 * (4 * hidden * n_in + 4 * hidden * hidden + 8 * hidden)


MHA = 3 * D * D + 3 * D + linear(D, D)  # in_proj weight and bias, out_proj
LAYER_NORM = 2 * D
FEED_FORWARD = linear(D, FF) + linear(FF, D)
ENCODER_LAYER = MHA + FEED_FORWARD + 2 * LAYER_NORM  # models.EncoderLayer
DECODER_LAYER_USED = MHA + FEED_FORWARD + 2 * LAYER_NORM  # models.DecoderLayer without its uncalled self_attn


def official_reaching_the_loss(audio_dim: int, visual_dim: int) -> int:
    """TemporalAttention + CMBS, every layer whose output reaches the loss."""
    temporal_attention = (
        linear(audio_dim, A_W)  # a_fc
        + linear(visual_dim, V_W)  # v_fc
        + bi_lstm(A_W, D // 2)  # audio_visual_rnn_layer.audio_rnn
        + bi_lstm(V_W, D)  # audio_visual_rnn_layer.visual_rnn
        + linear(2 * D, D) + 2 * ENCODER_LAYER  # video_encoder: affine_matrix, 2 layers
        + linear(D, D) + 2 * ENCODER_LAYER  # audio_encoder
        + linear(2 * D, D) + DECODER_LAYER_USED  # video_decoder: affine_matrix, 1 layer
        + linear(D, D) + DECODER_LAYER_USED  # audio_decoder
        + 2 * linear(D, 1)  # audio_gated, video_gated
    )  # fmt: skip
    cmbs = (
        2 * linear(D, NUM_EVENTS)  # audio_cas, video_cas
        + linear(D, 1) + linear(D, NUM_EVENTS)  # localize_module: classifier, event_classifier
    )  # fmt: skip
    return temporal_attention + cmbs


# Built by the official code but never reaching the loss: CMBS.AVInter / VAInter (an MHA and a
# LayerNorm each, outputs discarded), CMBS.video_norm / audio_norm, the two decoders' self_attn.
OFFICIAL_UNUSED = 2 * (MHA + LAYER_NORM) + 2 * LAYER_NORM + 2 * MHA


@pytest.mark.parametrize(
    ("audio_dim", "visual_dim", "expected"),
    [(768, 1536, 7_881_687), (12, 10, 7_003_607)],  # the paper's HTS-AT / Swin-V2-L widths; tiny
)
def test_the_parameter_count_is_the_official_heads_less_its_layers_that_never_reach_the_loss(
    audio_dim: int, visual_dim: int, expected: int
) -> None:
    head = CmbsHead(audio_dim, visual_dim, NUM_EVENTS)
    count = sum(p.numel() for p in head.parameters())
    assert count == official_reaching_the_loss(audio_dim, visual_dim) == expected
    assert OFFICIAL_UNUSED == 1_054_720  # the official module holds these on top: 8,936,407 at the paper's widths


# ---- the official forward, re-stated from its equations (sequence-first, as the official code runs)


def ref_linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def ref_layer_norm(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]


def ref_attention(q: torch.Tensor, kv: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """nn.MultiheadAttention(256, 4) on [L, B, D] query and [S, B, D] key = value."""
    wq, wk, wv = w[f"{name}.in_proj_weight"].chunk(3)
    bq, bk, bv = w[f"{name}.in_proj_bias"].chunk(3)
    heads, dh = 4, D // 4
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, dh).permute(1, 2, 0, 3)  # noqa: E731 [B, h, L, dh]
    qh, kh, vh = split(q @ wq.T + bq), split(kv @ wk.T + bk), split(kv @ wv.T + bv)
    att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ vh  # [B, h, L, dh]
    out = att.permute(2, 0, 1, 3).reshape(q.shape[0], q.shape[1], D)
    return ref_linear(out, w, f"{name}.out_proj")


def ref_feed_forward_and_norms(x: torch.Tensor, attended: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    x = ref_layer_norm(x + attended, w, f"{name}.norm1")
    ff = ref_linear(torch.relu(ref_linear(x, w, f"{name}.linear1")), w, f"{name}.linear2")
    return ref_layer_norm(x + ff, w, f"{name}.norm2")


def ref_encoder_layer(src: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    return ref_feed_forward_and_norms(src, ref_attention(src, src, w, f"{name}.self_attn"), w, name)


def ref_decoder_layer(tgt: torch.Tensor, memory: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    memory = torch.cat([memory, tgt], dim=0)  # DecoderLayer: the query attends to [memory; itself]
    return ref_feed_forward_and_norms(tgt, ref_attention(tgt, memory, w, f"{name}.attention"), w, name)


def ref_lstm_direction(x: torch.Tensor, w: dict, name: str, suffix: str) -> torch.Tensor:
    """[B, T, I] -> [B, T, H]: i, f, g, o gates; c = f c + i g; h = o tanh(c)."""
    w_ih, w_hh = w[f"{name}.weight_ih_l0{suffix}"], w[f"{name}.weight_hh_l0{suffix}"]
    bias = w[f"{name}.bias_ih_l0{suffix}"] + w[f"{name}.bias_hh_l0{suffix}"]
    hidden = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    out = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, dim=1)


def ref_bi_lstm(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    forward = ref_lstm_direction(x, w, name, "")
    backward = ref_lstm_direction(x.flip(1), w, name, "_reverse").flip(1)
    return torch.cat([forward, backward], dim=-1)


def reference(a: torch.Tensor, v: torch.Tensor, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """TemporalAttention.forward then CMBS.forward (eval mode), in the official variable names;
    returns (is_event_scores [B, T], event_scores, audio_visual_gate [B, T], av_score)."""
    audio_feature = ref_linear(a, w, "audio_proj")  # a_fc
    visual_feature = torch.relu(ref_linear(v, w, "visual_proj"))  # v_fc, relu (dropout off)
    audio_rnn = ref_bi_lstm(audio_feature, w, "audio_rnn").transpose(0, 1)  # [T, B, 256]
    visual_rnn = ref_bi_lstm(visual_feature, w, "visual_rnn").transpose(0, 1)  # [T, B, 512]

    def temporal(x: torch.Tensor, name: str) -> torch.Tensor:  # InternalTemporalRelationModule
        x = ref_linear(x, w, f"{name}.proj")
        return ref_encoder_layer(ref_encoder_layer(x, w, f"{name}.layers.0"), w, f"{name}.layers.1")

    def cross(query: torch.Tensor, memory: torch.Tensor, name: str) -> torch.Tensor:  # CrossModalRelationAttModule
        return ref_decoder_layer(ref_linear(query, w, f"{name}.proj"), memory, w, f"{name}.layer")

    video_key_value = temporal(visual_rnn, "visual_context")
    audio_query_output = cross(audio_rnn, video_key_value, "audio_query")
    audio_key_value = temporal(audio_rnn, "audio_context")
    video_query_output = cross(visual_rnn, audio_key_value, "visual_query")
    audio_gate = torch.sigmoid(ref_linear(audio_key_value, w, "audio_gate"))
    video_gate = torch.sigmoid(ref_linear(video_key_value, w, "visual_gate"))
    audio_visual_gate = audio_gate * video_gate
    video_feature = video_query_output + audio_gate * video_query_output * 0.1
    audio_feature = audio_query_output + video_gate * audio_query_output * 0.1

    # CMBS
    video_cas = ref_linear(video_feature, w, "visual_scores").permute(1, 0, 2)  # [B, T, 28]
    audio_cas = ref_linear(audio_feature, w, "audio_scores").permute(1, 0, 2)
    score_video = video_cas.sort(descending=True, dim=1).values[:, :4, :].mean(dim=1)
    score_audio = audio_cas.sort(descending=True, dim=1).values[:, :4, :].mean(dim=1)
    av_score = (score_video + score_audio) / 2
    fused = (video_feature + audio_feature) / 2  # [T, B, 256]
    is_event_scores = ref_linear(fused, w, "relevance")  # [T, B, 1]
    event_scores = ref_linear(fused.transpose(1, 0).max(1).values, w, "category") + 0.3 * av_score
    return (
        is_event_scores.transpose(1, 0).squeeze(-1),
        event_scores,
        audio_visual_gate.transpose(1, 0).squeeze(-1),
        av_score,
    )


@pytest.mark.parametrize("segments", [5, 3])  # the top-4 pool over more segments, and over all of fewer
def test_the_forward_equals_the_official_equations_in_float64(segments: int) -> None:
    torch.manual_seed(0)
    head = CmbsHead(12, 10, NUM_EVENTS).double().eval()
    with torch.no_grad():
        for p in head.parameters():  # off the default init: every bias and norm weight matters
            p.copy_(0.3 * torch.randn_like(p))
    a = torch.randn(2, segments, 12, dtype=torch.float64)
    v = torch.randn(2, segments, 10, dtype=torch.float64)
    with torch.no_grad():
        out = head(AVFeatures(a, v))
    weights = {k: t.detach() for k, t in head.state_dict().items()}
    is_event, event, gate, av_score = reference(a, v, weights)
    assert out.relevance.shape == out.gate.shape == (2, segments)
    assert out.category.shape == out.pooled.shape == (2, NUM_EVENTS)
    torch.testing.assert_close(out.relevance, is_event, **FLOAT64)
    torch.testing.assert_close(out.category, event, **FLOAT64)
    torch.testing.assert_close(out.gate, gate, **FLOAT64)
    torch.testing.assert_close(out.pooled, av_score, **FLOAT64)


def output(relevance: list[float], category: list[float], gate: list[float], pooled: list[float]) -> CmbsOutput:
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731  one video
    return CmbsOutput(t(relevance), t(category), t(gate), t(pooled))


def test_the_loss_on_a_hand_computed_case() -> None:
    """Three categories (background 3), two segments: the first holds event 1, the second not.
    Relevance logits +-ln 3 give probability 3/4 of the right answer on both segments; the gate
    (a probability) 0.8 and 0.25; category logits (0, ln 2, 0) give event 1 probability 1/2;
    pooled scores (ln 3, ln 3, 0) give it 3/7."""
    out = output([math.log(3), -math.log(3)], [0.0, math.log(2), 0.0], [0.8, 0.25], [math.log(3), math.log(3), 0.0])
    label = torch.tensor([[1, 3]])
    expected = -math.log(0.75) - (math.log(0.8) + math.log(0.75)) / 2 + math.log(2) + math.log(7 / 3)
    assert cmbs_loss(out, label, background=3).item() == pytest.approx(expected, rel=1e-12)


def test_a_video_without_an_event_is_trained_towards_category_0_as_officially() -> None:
    """The official event label is the max over segments of each segment's arg-max over the 28
    foreground columns of its one-hot label, 0 for a background row."""
    out = output([0.0, 0.0], [math.log(2), 0.0, 0.0], [0.5, 0.5], [0.0, 0.0, 0.0])
    expected = math.log(2) + math.log(2) + math.log(3) + math.log(2)  # BCE, gate BCE, pooled CE, category CE (1/2)
    assert cmbs_loss(out, torch.tensor([[3, 3]]), background=3).item() == pytest.approx(expected, rel=1e-12)


def test_segments_take_the_video_category_where_relevant_and_background_elsewhere() -> None:
    out = output([2.0, -1.0, 0.1, 0.0], [0.1, -0.2, 0.7], [0.5] * 4, [0.0] * 3)
    assert cmbs_segment_classes(out, background=3).tolist() == [[2, 3, 2, 3]]  # p = 0.5 is not above 0.5


def test_the_task_switches_head_and_reads_its_output() -> None:
    assert isinstance(TASK.head(AveConfig(), _Encoder()), AveHead)
    head = TASK.head(AveConfig(head="cmbs"), _Encoder())
    assert isinstance(head, CmbsHead) and head.audio_proj.in_features == 12 and head.visual_proj.in_features == 10
    torch.manual_seed(0)
    out = head.eval()(AVFeatures(torch.randn(3, 4, 12), torch.randn(3, 4, 10)))
    label = torch.tensor([[0, 0, BACKGROUND, BACKGROUND], [5, 5, 5, 5], [BACKGROUND] * 4])
    batch = {"label": label}
    assert torch.equal(TASK.loss(out, batch), cmbs_loss(out, label, BACKGROUND))
    preds = TASK.predictions(out, batch)
    assert torch.equal(preds["pred"], cmbs_segment_classes(out, BACKGROUND)) and preds["label"] is label
    assert preds["pred"].shape == (3, 4) and not preds["pred"].requires_grad


class _Encoder:
    audio_dim, visual_dim = 12, 10


def test_the_head_is_stored_in_the_config_only_when_it_is_not_the_harness_head() -> None:
    assert "head" not in as_dict(AveConfig()) and as_dict(AveConfig(head="harness")) == as_dict(AveConfig())
    assert as_dict(AveConfig(head="cmbs"))["head"] == "cmbs"
    cfg = build_section(AveConfig, "ave", {}, parse_overrides(["ave.head=cmbs"], all_sections()))
    assert cfg.head == "cmbs"
    with pytest.raises(ConfigError, match=r"ave\.head='mlp' is not allowed \(allowed: harness, cmbs\)"):
        build_section(AveConfig, "ave", {}, parse_overrides(["ave.head=mlp"], all_sections()))


@pytest.mark.slow
def test_a_smoke_run_with_the_cmbs_head_completes_and_records_it(tmp_path: Path) -> None:
    run = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--device", "cpu", "--workers", "1"]
    quick = ["--set", "measure.enabled=false", "--set", "ave.head=cmbs"]
    assert main([*run, *quick, "--out", str(tmp_path / "out")]) == 0
    (record,) = ResultsStore(tmp_path / "out").load().records
    assert record["status"] == "ok" and record["config"]["task"]["head"] == "cmbs"
    assert 0.0 <= record["metrics"]["accuracy"] <= 100.0


@pytest.mark.parametrize("method", ["dgsct", "avmoe"])
def test_dgsct_and_avmoe_run_the_temporal_attention_once_under_the_cmbs_head(method: str) -> None:
    """The CMBS head holds the AVE code's temporal attention (officially: temporal_attn, then
    CMBS), so the encoder leaves its own out; under the harness's head the encoder runs it."""
    preset = get_preset("smoke")
    counts = {}
    for head in ("harness", "cmbs"):
        (run,) = resolve(RunPlan([method], ["ave"], "smoke", overrides=[f"ave.head={head}"]))
        model = build_model(run, preset, TASK).model
        encoder_attention = [m for m in model.encoder.modules() if isinstance(m, TemporalAttention)]
        counts[head] = len(encoder_attention)
        if head == "cmbs":
            towers = model.encoder.audio_bb, model.encoder.visual_bb
            assert (model.head.audio_proj.in_features, model.head.visual_proj.in_features) == tuple(
                t.out_dim for t in towers
            )
    assert counts == {"harness": 1, "cmbs": 0}
