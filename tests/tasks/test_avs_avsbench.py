"""The AVSBench mask decoder (`avs_s4.head` / `avs_ms3.head` = avsbench) against the official code,
OpenNLPLab/AVSBench at f7414aff6aedf49248887abf352471612fb1ec90, avs_scripts/avs_s4 and avs_ms3
(identical model/PVT_AVSModel.py and model/TPAVI.py; loss.py and train.sh per setting): its
parameter count by the official module's formula, its forward against a re-statement of the
official definitions, its losses on hand-computed cases, and runs through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import FLOAT64, gamma
from torch import nn

from bench.cli import main
from bench.config import ConfigError, as_dict, build_section, parse_overrides
from bench.plan import all_sections
from bench.registry import get_task
from bench.results import ResultsStore
from bench.tasks.avs import AvsConfig
from bench.tasks.base import DataShape, TaskModel
from bench.tasks.heads.avsbench import AvsbenchDecoder, AvsbenchOutput, FeatureFusionBlock, ResidualConvUnit, Tpavi
from mettle_core.interface import AVFeatures

C = 256  # Pred_endecoder(channel=256)
PVT_V2_B5 = (64, 128, 320, 512)  # the official maps' widths
VGGISH = 128  # the official audio width
SWINV2_L = (192, 384, 768, 1536)  # the paper preset's visual maps (frozen method)
HTSAT = 768  # the paper preset's audio embedding (frozen method)


def official_param_count(map_channels: tuple[int, ...], audio_dim: int) -> int:
    """Pred_endecoder(channel=256, tpavi_stages=[0, 1, 2, 3], tpavi_va_flag=True) less its PVT-v2
    backbone, with TPAVI's align_channel taking `audio_dim` inputs (128 there)."""
    inner = C // 2  # TPAVI's inter_channels
    reduction = sum(4 * (9 * c * C + C) for c in map_channels)  # conv1-4: Classifier_Module, 4 dilated 3x3 convs
    tpavi = (
        (audio_dim * C + C)  # align_channel
        + 2 * C  # norm_layer (LayerNorm)
        + 3 * (C * inner + inner)  # g, theta, phi: 1x1x1 Conv3d
        + (inner * C + C)  # W_z[0]: 1x1x1 Conv3d
        + 2 * C  # W_z[1]: BatchNorm3d (its running statistics are buffers)
    )
    rcu = 2 * (9 * C * C + C)  # ResidualConvUnit: two 3x3 convs with bias
    fusion = 4 * 2 * rcu  # path1-4: FeatureFusionBlock, two units each
    output = (9 * C * 128 + 128) + (9 * 128 * 32 + 32) + (32 + 1)  # output_conv
    return reduction + 4 * tpavi + fusion + output


NEVER_RUN = 2 * (9 * C * C + C)  # path4.resConfUnit1: built and trained, never run (path4 gets one input)


def test_the_formula_gives_the_official_modules_count() -> None:
    """19,877,569: the official Pred_endecoder built out of tree (PVT backbone stubbed out) and its
    parameters outside `encoder_backbone` counted."""
    assert official_param_count(PVT_V2_B5, VGGISH) == 19_877_569
    assert NEVER_RUN == 1_180_160


@pytest.mark.parametrize(
    ("map_channels", "audio_dim", "count"),
    [
        (PVT_V2_B5, VGGISH, 18_697_409),  # the official widths
        (SWINV2_L, HTSAT, 36_457_665),  # the paper preset
        ((16, 32, 64, 128), 128, 11_472_065),  # the smoke and tiny presets
        ((4, 6, 8, 16), 12, 9_454_785),  # the fake encoder of tests/tasks/conftest.py
    ],
)
def test_the_parameter_count_is_the_officials_less_the_unit_that_never_runs(
    map_channels: tuple[int, ...], audio_dim: int, count: int
) -> None:
    with torch.device("meta"):
        head = AvsbenchDecoder(map_channels, audio_dim)
    ours = sum(p.numel() for p in head.parameters())
    assert ours == official_param_count(map_channels, audio_dim) - NEVER_RUN == count


# The official definitions, re-stated: PVT_AVSModel.py's Classifier_Module, ResidualConvUnit,
# FeatureFusionBlock (resConfUnit1 = our `skip`, resConfUnit2 = our `unit`; path4's resConfUnit2 =
# our `top`), output_conv and forward; TPAVI.py's TPAVIModule (mode 'dot', dimension 3, bn_layer).


def ref_reduction(x: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
    out = F.conv2d(x, convs[0].weight, convs[0].bias, padding=3, dilation=3)
    for conv, d in zip(convs[1:], (6, 12, 18), strict=True):
        out = out + F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d)
    return out


def pointwise3d(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oc,bcthw->bothw", layer.weight[..., 0, 0, 0], x) + layer.bias.view(1, -1, 1, 1, 1)


def ref_batchnorm(x: torch.Tensor, bn: nn.BatchNorm3d) -> torch.Tensor:
    dims = (0, 2, 3, 4)
    mean, var = (x.mean(dims), x.var(dims, unbiased=False)) if bn.training else (bn.running_mean, bn.running_var)
    shape = (1, -1, 1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def ref_tpavi(x: torch.Tensor, audio: torch.Tensor, m: Tpavi) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, t, h, w = x.shape
    audio_temp = audio @ m.align.weight.T + m.align.bias  # [B, T, C]
    audio_map = audio_temp.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, h, w)  # [B, C, T, H, W]
    g_x = pointwise3d(m.g, x).reshape(b, c // 2, -1).permute(0, 2, 1)
    theta_x = pointwise3d(m.theta, x).reshape(b, c // 2, -1).permute(0, 2, 1)
    phi_x = pointwise3d(m.phi, audio_map).reshape(b, c // 2, -1)
    f = theta_x @ phi_x  # [B, THW, THW]
    y = (f / f.shape[-1]) @ g_x
    y = y.permute(0, 2, 1).reshape(b, c // 2, t, h, w)
    z = ref_batchnorm(pointwise3d(m.out[0], y), m.out[1]) + x
    z = z.permute(0, 2, 3, 4, 1)
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + m.norm.eps)
    return (z * m.norm.weight + m.norm.bias).permute(0, 4, 1, 2, 3), audio_temp


def ref_rcu(x: torch.Tensor, unit: ResidualConvUnit) -> torch.Tensor:
    x = F.relu(x)  # nn.ReLU(inplace=True) on the input: the skip below adds the rectified input
    out = F.relu(F.conv2d(x, unit.conv1.weight, unit.conv1.bias, padding=1))
    return F.conv2d(out, unit.conv2.weight, unit.conv2.bias, padding=1) + x


def ref_fusion(*xs: torch.Tensor, skip: ResidualConvUnit | None, unit: ResidualConvUnit) -> torch.Tensor:
    output = xs[0]
    if len(xs) == 2:
        output = output + ref_rcu(xs[1], skip)  # type: ignore[arg-type]
    output = ref_rcu(output, unit)
    return F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)


def ref_output(x: torch.Tensor, seq: nn.Sequential) -> torch.Tensor:
    x = F.conv2d(x, seq[0].weight, seq[0].bias, padding=1)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # Interpolate(2, "bilinear")
    x = F.relu(F.conv2d(x, seq[2].weight, seq[2].bias, padding=1))
    return F.conv2d(x, seq[4].weight, seq[4].bias)


def ref_decoder(
    maps: list[torch.Tensor], audio: torch.Tensor, head: AvsbenchDecoder
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    feats = [ref_reduction(x, r.convs) for x, r in zip(maps, head.reduce, strict=True)]
    a_feats = []
    for i, tpavi in enumerate(head.tpavi):
        _, c, h, w = feats[i].shape
        x = feats[i].reshape(-1, 5, c, h, w).permute(0, 2, 1, 3, 4)  # pre_reshape_for_tpavi
        z, a = ref_tpavi(x, audio.view(-1, 5, audio.shape[-1]), tpavi)
        feats[i] = z.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)  # post_reshape_for_tpavi
        a_feats.append(a)
    conv4 = ref_fusion(feats[3], skip=None, unit=head.top)  # path4: one input
    conv43 = ref_fusion(conv4, feats[2], skip=head.fuse[2].skip, unit=head.fuse[2].unit)
    conv432 = ref_fusion(conv43, feats[1], skip=head.fuse[1].skip, unit=head.fuse[1].unit)
    conv4321 = ref_fusion(conv432, feats[0], skip=head.fuse[0].skip, unit=head.fuse[0].unit)
    return ref_output(conv4321, head.predict), feats, a_feats


def fixed_weights(module: nn.Module) -> nn.Module:
    """float64, seeded; the BatchNorms (zero at init, which would hide TPAVI's attention) drawn too."""
    torch.manual_seed(0)
    module = module.double()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("training", [True, False])
def test_tpavi_equals_the_official_definition(training: bool) -> None:
    torch.manual_seed(0)
    tpavi = fixed_weights(Tpavi(audio_dim=7)).train(training)
    x, audio = randn(2, C, 5, 3, 4), randn(2, 5, 7)
    want, want_audio = ref_tpavi(x, audio, tpavi)
    got, got_audio = tpavi(x, audio)
    torch.testing.assert_close(got, want, **FLOAT64)
    torch.testing.assert_close(got_audio, want_audio, **FLOAT64)
    assert (got - F.layer_norm(x.movedim(1, -1), (C,)).movedim(-1, 1)).abs().max() > 0.1  # attention contributes


def test_a_fusion_block_equals_the_official_definition() -> None:
    torch.manual_seed(0)
    block = fixed_weights(FeatureFusionBlock())
    coarse, level = randn(3, C, 4, 5), randn(3, C, 4, 5)
    want = ref_fusion(coarse, level, skip=block.skip, unit=block.unit)
    got = F.interpolate(block(coarse, level), size=(8, 10), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, want, **FLOAT64)


def test_the_decoder_equals_the_official_definition_on_tiny_sizes() -> None:
    """Two videos of 5 frames, maps of 3/5/6/8 channels at 8/4/2/1 pixels a side, in train mode
    (batch statistics) as it trains; logits at 4x the finest map."""
    torch.manual_seed(0)
    head = fixed_weights(AvsbenchDecoder((3, 5, 6, 8), audio_dim=12)).train()
    maps = [randn(10, c, s, s) for c, s in zip((3, 5, 6, 8), (8, 4, 2, 1), strict=True)]
    audio = randn(2, 5, 12)
    want, want_maps, want_audio = ref_decoder(maps, audio, head)
    out = head(AVFeatures(audio, randn(2, 5, 4), maps))
    assert out.logits.shape == (2, 5, 32, 32)
    torch.testing.assert_close(out.logits, want.view(2, 5, 32, 32), **FLOAT64)
    for got, ref in zip(out.maps + out.audio, want_maps + want_audio, strict=True):
        torch.testing.assert_close(got, ref, **FLOAT64)


BATCH_S4 = {"frame_weight": torch.tensor([[1.0, 0, 0, 0, 0]])}


def bce_bound(logits: torch.Tensor) -> float:
    """The task's BCE runs in float32 (its target is `mask.float()`): each term, non-negative,
    within a few roundings (log1p, exp, products), their sum within gamma(n), then the mean and
    the matching term's weighted add: a relative bound of gamma(n + 8) over the n logits."""
    return gamma(logits.numel() + 8)


def test_s4_loss_is_the_bce_of_the_first_frame_only_on_a_hand_computed_case() -> None:
    """avs_s4/loss.py F1_IoU_BCELoss: BCE on frame 1 alone; avs_s4/train.sh passes no
    --sa_loss_flag, so no matching term, whatever the head returns."""
    logits = torch.full((1, 5, 2, 2), 7.0, dtype=torch.float64)  # frames 2-5: unsupervised, must not count
    logits[0, 0] = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    mask = torch.zeros(1, 5, 2, 2, dtype=torch.bool)
    mask[0, 0] = torch.tensor([[True, False], [False, True]])
    batch = {**BATCH_S4, "mask": mask}
    want = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(-3))) / 4
    task = get_task("avs_s4")
    maps = [torch.randn(5, 2, 2, 2, dtype=torch.float64)]
    audio = [torch.randn(1, 5, 2, dtype=torch.float64)]
    with_maps = AvsbenchOutput(logits, maps, audio)
    assert with_maps.matching_loss() > 0.01
    for output in (logits, with_maps):
        assert task.loss(output, batch).item() == pytest.approx(want, rel=bce_bound(logits))


def test_ms3_loss_adds_half_the_summed_matching_kl_on_a_hand_computed_case() -> None:
    """avs_ms3/loss.py F5_IoU_BCELoss on all five frames, plus lambda_1 = 0.5 times
    A_MaskedV_SimmLoss with --kl_flag: per level, the mask is sigmoid(avg-pooled logits), the map
    is rectified (the fusion's in-place ReLU), KL(softmax(audio) || softmax(masked mean)) is summed
    over the 10 frames, and the levels are averaged."""
    ln3 = math.log(3)
    logits = torch.tensor([[ln3, ln3], [-ln3, -ln3]], dtype=torch.float64).expand(2, 5, 2, 2)
    batch = {"mask": torch.ones(2, 5, 2, 2, dtype=torch.bool), "frame_weight": torch.ones(2, 5)}
    bce = (math.log(4 / 3) + math.log(4)) / 2  # sigmoid(+-ln 3) = 3/4, 1/4 against all-ones masks
    # level A, 2x1 pixels: the mask pools a row to 3/4 (top) and 1/4 (bottom); channel 0 is 4 on
    # both rows, channel 1 is -2 (rectified to 0) on top and 8 below: masked means (2, 1); audio (0, 0)
    level_a = torch.tensor([[[4.0], [4.0]], [[-2.0], [8.0]]], dtype=torch.float64).expand(10, 2, 2, 1)
    e = math.e
    kl_a = 0.5 * math.log(0.5 / (e / (1 + e))) + 0.5 * math.log(0.5 / (1 / (1 + e)))
    # level B, 1x1: a zero map (uniform softmax) against audio (ln 3, 0) (softmax 3/4, 1/4)
    level_b = torch.zeros(10, 2, 1, 1, dtype=torch.float64)
    kl_b = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    audio_a = torch.zeros(2, 5, 2, dtype=torch.float64)
    audio_b = torch.tensor([ln3, 0.0], dtype=torch.float64).expand(2, 5, 2)
    output = AvsbenchOutput(logits, [level_a, level_b], [audio_a, audio_b])
    matching = 10 * (kl_a + kl_b) / 2
    assert output.matching_loss().item() == pytest.approx(matching, rel=1e-12)
    assert get_task("avs_ms3").loss(output, batch).item() == pytest.approx(bce + 0.5 * matching, rel=bce_bound(logits))
    # the harness head
    assert get_task("avs_ms3").loss(logits, batch).item() == pytest.approx(
        bce, rel=bce_bound(logits)
    )  # the harness head


@pytest.mark.parametrize("name", ["avs_s4", "avs_ms3"])
def test_the_head_switch_builds_the_decoder_whose_loss_reaches_every_parameter(
    name: str,
    encoder,  # noqa: ANN001
    shape: DataShape,
) -> None:
    """At initialisation TPAVI's zero BatchNorm blocks its attention: theta, phi, g and the conv
    before that BatchNorm get a zero gradient (as in the official code), and so does the audio
    projection where no matching term reads it (S4); every other parameter a non-zero one."""
    task = get_task(name)
    cfg = task.config_cls(num_train=2, num_val=1, num_test=1, head="avsbench")
    model = TaskModel(encoder, task.head(cfg, encoder))
    assert isinstance(model.head, AvsbenchDecoder)
    batch = task.synthetic(cfg, shape)["train"].batches(2)[0]
    out = model(batch["audio"], batch["visual"])
    assert out.logits.shape == (2, 5, 32, 32)  # 4x the finest map (stride 4): the frame size
    task.loss(out, batch).backward()
    zero_grad = {"g", "theta", "phi", "out.0"} | ({"align"} if name == "avs_s4" else set())
    for param_name, p in model.head.named_parameters():
        blocked = param_name.startswith("tpavi.") and ".".join(param_name.split(".")[2:-1]) in zero_grad
        assert p.grad is not None and (p.grad.abs().sum() == 0) == blocked, param_name
    assert task.predictions(out, batch)["logits"].shape == (2, 5, 32, 32)


def test_head_is_stored_only_when_set_and_checked() -> None:
    assert "head" not in as_dict(AvsConfig())  # recorded runs keep their keys
    assert as_dict(AvsConfig(head="avsbench"))["head"] == "avsbench"
    with pytest.raises(ConfigError, match=r"avs_s4\.head='avsbnech' is not allowed \(allowed: harness, avsbench\)"):
        parse_overrides(["avs_s4.head=avsbnech"], all_sections())
    (override,) = parse_overrides(["avs_s4.head=avsbench"], all_sections())
    assert build_section(AvsConfig, "avs_s4", {}, [override]).head == "avsbench"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["avs_s4", "avs_ms3"])
def test_a_smoke_run_with_the_avsbench_head_records_it(name: str, tmp_path) -> None:  # noqa: ANN001
    """The CLI run with the head switched (splits cut and measurement off: the 256-wide decoder
    costs CPU minutes on the whole smoke splits)."""
    run = ["run", "--methods", "frozen", "--tasks", name, "--preset", "smoke", "--device", "cpu"]
    small = [f"{name}.num_train=2", f"{name}.num_val=2", f"{name}.num_test=2", "measure.enabled=false"]
    sets = [arg for value in [f"{name}.head=avsbench", *small] for arg in ("--set", value)]
    assert main([*run, *sets, "--out", str(tmp_path)]) == 0
    (record,) = ResultsStore(tmp_path).load().records
    assert record["status"] == "ok" and record["config"]["task"]["head"] == "avsbench"
    assert 0.0 <= record["metrics"]["miou"] <= 100.0
