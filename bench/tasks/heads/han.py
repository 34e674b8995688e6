"""HAN, the AVVP head of Tian et al. (ECCV 2020): its hybrid attention network, its attentive
multimodal multiple-instance (MMIL) pooling and the losses of its training script, re-stated
from YapengTian/AVVP-ECCV20 (nets/net_audiovisual.py `MMIL_Net` and `HANLayer`, main_avvp.py,
at fde5611).

Each modality is projected to 512 wide; one hybrid attention layer then updates each stream with
the other's attention over it plus its own self-attention (one head each, dropout 0.1), a
post-norm and a 512-wide ReLU feed-forward block. The same layer, one set of weights, serves
both streams. Per segment and modality a sigmoid gives class probabilities; a softmax over time
and one over the two modalities weight them into the video-level probability, and the
time-weighted sums give each modality's video-level probability, which the loss guides with the
video labels (the visual target smoothed).

What differs from the released code, and why:
- Inputs: the official head reads 128-d VGGish audio, 2048-d ResNet-152 frames (eight per
  segment, averaged after projection) and 512-d R(2+1)D clips; the 2D and 3D visual streams
  are projected to 512 each, concatenated and fused by a Linear(1024 -> 512). Here the encoder
  gives one audio and one visual vector per segment: audio reads Linear(audio_dim -> 512) and
  visual Linear(visual_dim -> 512), the official projections' form at our widths. There is no
  3D stream, so neither its projection (`fc_st`) nor the fusion (`fc_fusion`) is built.
- Modules the official forward never calls are not built: `audio_encoder`, `visual_encoder`,
  `cmt_encoder` and the hybrid encoder's own `norm1` / `norm2` (its `norm` is None). No
  gradient reaches them in the official training either.
- One layer, as the official model has. (The official encoder loop feeds every layer the
  encoder's inputs rather than the previous layer's output, so more layers would not stack
  there; with one layer nothing depends on it.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mettle_core.interface import AVFeatures

D_MODEL = 512
NUM_HEADS = 1
FEEDFORWARD = 512
DROPOUT = 0.1
PROB_EPS = 1e-7  # the official script clamps every probability into [eps, 1 - eps] before BCE
# The official label smoothing of the modality-wise guides: target = s * label + (1 - s) / 2.
AUDIO_SMOOTHING = 1.0  # audio: the labels as they are
VISUAL_SMOOTHING = 0.9  # visual: 0.95 for a present class, 0.05 for an absent one


class HanOutput(dict[str, torch.Tensor]):
    """The harness head's keys (video [B, C]; audio and visual [B, T, C] per-segment
    probabilities), plus HAN's modality-wise video-level probabilities video_audio and
    video_visual [B, C]. Its own type, so that the task gives it HAN's loss."""


class HybridAttentionLayer(nn.Module):
    """One stream's update: cross-modal attention over the other stream plus self-attention,
    each through dropout, added to the stream and normed; then a ReLU feed-forward block with
    its residual and norm (the official HANLayer)."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D_MODEL, NUM_HEADS, dropout=DROPOUT, batch_first=True)
        self.cm_attn = nn.MultiheadAttention(D_MODEL, NUM_HEADS, dropout=DROPOUT, batch_first=True)
        self.linear1 = nn.Linear(D_MODEL, FEEDFORWARD)
        self.linear2 = nn.Linear(FEEDFORWARD, D_MODEL)
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.dropout = nn.Dropout(DROPOUT)
        self.dropout_cm = nn.Dropout(DROPOUT)
        self.dropout_self = nn.Dropout(DROPOUT)
        self.dropout_ffn = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x, other: [B, T, D] -> [B, T, D]."""
        cross = self.cm_attn(x, other, other, need_weights=False)[0]
        own = self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm1(x + self.dropout_cm(cross) + self.dropout_self(own))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout_ffn(ffn))


class HanHead(nn.Module):
    """AVFeatures (a [B, T, audio_dim], v [B, T, visual_dim]) -> HanOutput."""

    def __init__(self, audio_dim: int, visual_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc_a = nn.Linear(audio_dim, D_MODEL)
        self.fc_v = nn.Linear(visual_dim, D_MODEL)
        self.hybrid = HybridAttentionLayer()
        self.fc_prob = nn.Linear(D_MODEL, num_classes)
        self.fc_frame_att = nn.Linear(D_MODEL, num_classes)
        self.fc_av_att = nn.Linear(D_MODEL, num_classes)

    def forward(self, feats: AVFeatures) -> HanOutput:
        a, v = self.fc_a(feats.a), self.fc_v(feats.v)
        a, v = self.hybrid(a, v), self.hybrid(v, a)
        x = torch.stack([a, v], dim=2)  # [B, T, 2, D]: audio, visual
        frame_prob = torch.sigmoid(self.fc_prob(x))  # [B, T, 2, C]
        over_time = torch.softmax(self.fc_frame_att(x), dim=1)
        over_modality = torch.softmax(self.fc_av_att(x), dim=2)
        temporal_prob = over_time * frame_prob
        modality_prob = temporal_prob.sum(dim=1)  # [B, 2, C]
        return HanOutput(
            video=(temporal_prob * over_modality).sum(dim=(1, 2)),
            audio=frame_prob[:, :, 0],
            visual=frame_prob[:, :, 1],
            video_audio=modality_prob[:, 0],
            video_visual=modality_prob[:, 1],
        )


def han_loss(output: HanOutput, label: torch.Tensor) -> torch.Tensor:
    """The official objective: BCE of the video-level probability on the video labels, plus
    BCE of each modality's video-level probability on its smoothed labels, every probability
    clamped into [1e-7, 1 - 1e-7]; each BCE is a mean over videos and classes."""

    def bce(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(prob.clamp(PROB_EPS, 1 - PROB_EPS), target)

    def smoothed(share: float) -> torch.Tensor:
        return share * label + (1 - share) * 0.5

    return (
        bce(output["video_audio"], smoothed(AUDIO_SMOOTHING))
        + bce(output["video_visual"], smoothed(VISUAL_SMOOTHING))
        + bce(output["video"], label)
    )
