"""AVSBench's mask decoder (Zhou et al., ECCV 2022; OpenNLPLab/AVSBench, avs_scripts/avs_s4 and
avs_ms3: model/PVT_AVSModel.py `Pred_endecoder` without its PVT-v2 backbone, model/TPAVI.py and
loss.py), the head the published AVS results of LAVisH and DG-SCT train.

Each of the 4 visual levels is reduced to 256 channels (the sum of four dilated 3x3 convs), then
passes TPAVI, audio attention over every pixel of every frame (both train.sh: `--tpavi_stages 0 1
2 3 --tpavi_va_flag`); residual-conv fusion blocks run coarse to fine, upsampling x2 after each,
and the output convs upsample x2 once more: logits at 4x the finest map (the frame size where
that map has stride 4). S4 and MS3 build the same decoder; their losses (AvsbenchOutput) differ.

Where this differs from the official code:
- inputs: the official reduces PVT-v2-b5's maps (64, 128, 320, 512 channels) and TPAVI projects
  128-d VGGish audio (Linear 128 -> 256); here the same layers take the tower's map widths and
  the encoder's per-segment audio embedding (Linear audio_dim -> 256);
- frames: the official reshapes by 5 frames; here T is read from the audio;
- the official's coarsest fusion block (`path4`) has one input, so its first residual unit
  (`resConfUnit1`, 2 * (9 * 256^2 + 256) = 1,180,160 parameters) is built, trained by Adam and
  never run; it is not built here (`top` is the unit that runs);
- the official upsamples each fusion output by a factor 2, so every level must be exactly twice
  the next; here it goes to the next level's size (the same values where it is twice);
- the official MS3 term pools the 224 x 224 logits; here the decoder's own (4x the finest map),
  which are the frame-size logits only where the finest map has stride 4 (the presets' towers);
- kept as the official computes them: the fusion's ReLU is in place there, so a residual unit's
  skip adds relu(x) (and the TPAVI outputs that the MS3 loss reads are rectified); TPAVI's output
  BatchNorm starts at zero, so TPAVI starts as LayerNorm(x) and its projections get no gradient
  until that BatchNorm moves; TPAVI forms the [T*H*W, T*H*W] affinity as the official does, so
  the head costs the memory it costs there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mettle_core.interface import AVFeatures

WIDTH = 256  # every level's width after the channel reduction (`channel=256` in train.py)
DILATIONS = (3, 6, 12, 18)  # the channel reduction's four 3x3 convs (`Classifier_Module`)


class ChannelReduction(nn.Module):
    """A level's channels to `WIDTH`: the sum of four 3x3 convs dilated 3, 6, 12 and 18, weights
    drawn from N(0, 0.01) as the official draws them."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, WIDTH, 3, padding=d, dilation=d) for d in DILATIONS)
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class Tpavi(nn.Module):
    """Temporal pixel-wise audio-visual interaction: every pixel of every frame (query theta)
    attends to the frames' audio broadcast over the pixels (key phi) and gathers the visual
    values g; dot-product affinity divided by the number of positions T*H*W, no softmax; a 1x1
    conv and a zero-initialised BatchNorm back to the width, a residual, LayerNorm over channels."""

    def __init__(self, audio_dim: int) -> None:
        super().__init__()
        inner = WIDTH // 2
        self.align = nn.Linear(audio_dim, WIDTH)
        self.g = nn.Conv3d(WIDTH, inner, 1)
        self.theta = nn.Conv3d(WIDTH, inner, 1)
        self.phi = nn.Conv3d(WIDTH, inner, 1)
        self.out = nn.Sequential(nn.Conv3d(inner, WIDTH, 1), nn.BatchNorm3d(WIDTH))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, T, H, W]; audio: [B, T, D_a]. Returns the map [B, C, T, H, W] and the projected
        audio [B, T, C] (what the MS3 matching loss compares the masked map with)."""
        b, _, t, h, w = x.shape
        a = self.align(audio)
        query = self.theta(x).flatten(2).transpose(1, 2)  # [B, THW, C/2]
        # phi of the audio broadcast over the pixels equals phi of the audio, broadcast
        key = self.phi(a.transpose(1, 2)[..., None, None]).expand(-1, -1, -1, h, w).flatten(2)  # [B, C/2, THW]
        value = self.g(x).flatten(2).transpose(1, 2)  # [B, THW, C/2]
        affinity = query @ key / key.shape[-1]  # [B, THW, THW]
        y = (affinity @ value).transpose(1, 2).reshape(b, -1, t, h, w)
        z = self.out(y) + x
        return self.norm(z.movedim(1, -1)).movedim(-1, 1), a


class ResidualConvUnit(nn.Module):
    """conv3x3(relu(conv3x3(relu(x)))) + relu(x): the official ReLU is in place, so the skip
    adds the rectified input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """The coarser path plus a residual unit of this level's map, through a second unit (the
    official block without its upsampling, which the decoder does)."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = ResidualConvUnit()
        self.unit = ResidualConvUnit()

    def forward(self, coarse: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.unit(coarse + self.skip(level))


@dataclass
class AvsbenchOutput:
    """logits: [B, T, h, w]; maps: each level after TPAVI, [B*T, C, H_s, W_s], finest first;
    audio: each TPAVI's projected audio, [B, T, C]."""

    logits: torch.Tensor
    maps: list[torch.Tensor]
    audio: list[torch.Tensor]

    def matching_loss(self) -> torch.Tensor:
        """The MS3 audio-visual matching term (`A_MaskedV_SimmLoss` under avs_ms3/train.sh's
        `--masked_av_stages 0 1 2 3 --kl_flag`, no feature normalisation, no thresholding): per
        level, the predicted mask (sigmoid of the logits average-pooled to the level's size)
        weights the rectified map, its spatial mean is a frame's visual feature, and
        KL(softmax(audio) || softmax(visual)) is summed over frames and channels (the official
        reduction='sum', so it grows with the batch); the mean over the levels."""
        logits = self.logits.flatten(0, 1).unsqueeze(1)  # [B*T, 1, h, w]
        total = torch.zeros((), dtype=logits.dtype, device=logits.device)
        for level, audio in zip(self.maps, self.audio, strict=True):
            mask = torch.sigmoid(F.adaptive_avg_pool2d(logits, level.shape[-2:]))
            visual = (F.relu(level) * mask).mean((-2, -1))  # [B*T, C]
            target = audio.flatten(0, 1).softmax(-1)
            total = total + F.kl_div(visual.log_softmax(-1), target, reduction="sum")
        return total / len(self.maps)


class AvsbenchDecoder(nn.Module):
    """AVFeatures -> AvsbenchOutput: the official decoder over the tower's 4 map levels."""

    def __init__(self, map_channels: tuple[int, ...], audio_dim: int) -> None:
        super().__init__()
        if len(map_channels) != 4:
            raise ValueError(f"the AVSBench decoder needs 4 map levels, the encoder gives {len(map_channels)}")
        self.reduce = nn.ModuleList(ChannelReduction(c) for c in map_channels)
        self.tpavi = nn.ModuleList(Tpavi(audio_dim) for _ in map_channels)
        self.top = ResidualConvUnit()  # the coarsest level's block: one input
        self.fuse = nn.ModuleList(FeatureFusionBlock() for _ in map_channels[:-1])
        self.predict = nn.Sequential(
            nn.Conv2d(WIDTH, 128, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(128, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )

    def forward(self, feats: AVFeatures) -> AvsbenchOutput:
        if feats.maps is None:
            raise ValueError("the AVSBench decoder needs AVFeatures.maps (TaskSpec.needs_maps)")
        b, t = feats.a.shape[:2]
        levels, audio = [], []
        for reduce, tpavi, x in zip(self.reduce, self.tpavi, feats.maps, strict=True):
            z, a = tpavi(reduce(x).unflatten(0, (b, t)).transpose(1, 2), feats.a)
            levels.append(z.transpose(1, 2).flatten(0, 1))
            audio.append(a)
        # where each level's fused output goes: the next finer level's size; twice the finest
        h, w = levels[0].shape[-2:]
        sizes = [(2 * h, 2 * w), *(tuple(level.shape[-2:]) for level in levels[:-1])]
        y = _upsample(self.top(levels[-1]), sizes[-1])
        for i in range(len(levels) - 2, -1, -1):
            y = _upsample(self.fuse[i](y, levels[i]), sizes[i])
        logits = self.predict(y)  # [B*T, 1, 4h, 4w]
        return AvsbenchOutput(logits.view(b, t, *logits.shape[-2:]), levels, audio)


def _upsample(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
