"""DG-SCT's AVE head: its TemporalAttention followed by its CMBS module, with the losses and
the segment decision of its AVE training script (haoyi-duan/DG-SCT, DG-SCT/AVE/nets/net_trans.py,
nets/models.py and main_trans.py at 211fc57), re-stated here.

Per segment, audio and visual embeddings are projected (visual through a ReLU and dropout),
run through a bidirectional LSTM each, then through self-attention encoders (each modality's
context) and cross-modal decoders (each modality querying the other's context together with
itself); sigmoid gates from the two contexts scale the decoders' outputs. The CMBS part scores
whether each segment is relevant to the video's event (the fused features) and predicts one
event category per video (the fused features max-pooled over time, plus a share of the mean of
each modality's top-4 segment scores).

What differs from the released code, and why:
- Input widths: the official projections read 768-d HTS-AT audio and 1536-d Swin-V2-L visual
  vectors; here they read the encoder's widths, `audio_dim` and `visual_dim`. The official head
  takes one pooled vector per segment too (its audio-guided spatial attention sits in its
  adapters, before the head), so AVFeatures' `a` and `v` are what it reads; no map is needed.
- Parameters that never reach the loss are not built: CMBS's AVInter / VAInter (computed and
  discarded), its `video_norm` / `audio_norm`, and each cross-modal layer's `self_attn` (never
  called). They would hold 1,054,720 parameters that no gradient reaches.
- The audio-visual gate is a product of sigmoids, a probability; the official script applies
  BCE-with-logits to it (a sigmoid too many). Here it gets the BCE it was meant to have.
- The LSTMs' dropout (0.2 with one layer) does nothing in the official code and is left out.
- The official code fixes 10 segments; here any T, the top-4 pool taking min(4, T) segments.
- A video whose segments are all background has, in the official label derivation, event
  category 0; kept (real AVE videos always hold an event, the synthetic ones may not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mettle_core.interface import AVFeatures

D_MODEL = 256  # the width the two streams meet at
AUDIO_WIDTH = 128  # the audio projection's output (the official a_fc)
VISUAL_WIDTH = 512  # the visual projection's output (the official v_fc)
FEEDFORWARD = 1024
NUM_HEADS = 4
ATTENTION_DROPOUT = 0.1
VISUAL_DROPOUT = 0.2
GATE_SHARE = 0.1  # TemporalAttention.gamma: how much a gate scales the other stream
POOLED_SHARE = 0.3  # CMBS.gamma: the top-k pooled segment scores' share of the category logits
TOP_K = 4  # segments whose scores a modality's video-level category score averages


@dataclass
class CmbsOutput:
    """relevance: [B, T] logits that a segment shows and sounds the event; category: [B, C]
    video-level event logits; gate: [B, T] the audio-visual gate (a probability); pooled:
    [B, C] the two modalities' top-k pooled segment scores, averaged."""

    relevance: torch.Tensor
    category: torch.Tensor
    gate: torch.Tensor
    pooled: torch.Tensor


class CrossModalLayer(nn.Module):
    """Post-norm attention of a query sequence over the other modality's context followed by
    the query itself, then a ReLU feed-forward block (the official DecoderLayer)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(D_MODEL, NUM_HEADS, dropout=ATTENTION_DROPOUT, batch_first=True)
        self.linear1 = nn.Linear(D_MODEL, FEEDFORWARD)
        self.linear2 = nn.Linear(FEEDFORWARD, D_MODEL)
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.dropout = nn.Dropout(ATTENTION_DROPOUT)
        self.dropout1 = nn.Dropout(ATTENTION_DROPOUT)
        self.dropout2 = nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        memory = torch.cat([context, query], dim=1)
        x = self.norm1(query + self.dropout1(self.attention(query, memory, memory, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def _self_attention_layer() -> nn.TransformerEncoderLayer:
    """The official EncoderLayer is PyTorch's post-norm, ReLU encoder layer."""
    return nn.TransformerEncoderLayer(
        D_MODEL, NUM_HEADS, FEEDFORWARD, ATTENTION_DROPOUT, activation="relu", batch_first=True
    )


class TemporalContext(nn.Module):
    """A projection to D_MODEL and two self-attention layers: a modality's own temporal
    context (the official InternalTemporalRelationModule)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, D_MODEL)
        self.layers = nn.ModuleList(_self_attention_layer() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class CrossModalRelation(nn.Module):
    """A projection of the query to D_MODEL and one cross-modal layer (the official
    CrossModalRelationAttModule)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, D_MODEL)
        self.layer = CrossModalLayer()

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.layer(self.proj(query), context)


class CmbsHead(nn.Module):
    """AVFeatures ([B, T, audio_dim], [B, T, visual_dim]) -> CmbsOutput over `num_events`
    categories: DG-SCT's TemporalAttention + CMBS."""

    def __init__(self, audio_dim: int, visual_dim: int, num_events: int) -> None:
        super().__init__()
        self.audio_proj = nn.Linear(audio_dim, AUDIO_WIDTH)
        self.visual_proj = nn.Linear(visual_dim, VISUAL_WIDTH)
        self.visual_dropout = nn.Dropout(VISUAL_DROPOUT)
        self.audio_rnn = nn.LSTM(AUDIO_WIDTH, D_MODEL // 2, batch_first=True, bidirectional=True)
        self.visual_rnn = nn.LSTM(VISUAL_WIDTH, D_MODEL, batch_first=True, bidirectional=True)
        self.audio_context = TemporalContext(D_MODEL)
        self.visual_context = TemporalContext(2 * D_MODEL)
        self.audio_query = CrossModalRelation(D_MODEL)
        self.visual_query = CrossModalRelation(2 * D_MODEL)
        self.audio_gate = nn.Linear(D_MODEL, 1)
        self.visual_gate = nn.Linear(D_MODEL, 1)
        self.audio_scores = nn.Linear(D_MODEL, num_events)
        self.visual_scores = nn.Linear(D_MODEL, num_events)
        self.relevance = nn.Linear(D_MODEL, 1)
        self.category = nn.Linear(D_MODEL, num_events)

    def forward(self, feats: AVFeatures) -> CmbsOutput:
        audio, _ = self.audio_rnn(self.audio_proj(feats.a))  # [B, T, 256]
        visual, _ = self.visual_rnn(self.visual_dropout(F.relu(self.visual_proj(feats.v))))  # [B, T, 512]
        audio_context, visual_context = self.audio_context(audio), self.visual_context(visual)
        audio_gate = torch.sigmoid(self.audio_gate(audio_context))  # [B, T, 1]
        visual_gate = torch.sigmoid(self.visual_gate(visual_context))
        a = self.audio_query(audio, visual_context) * (1 + GATE_SHARE * visual_gate)
        v = self.visual_query(visual, audio_context) * (1 + GATE_SHARE * audio_gate)
        pooled = (_top_k_mean(self.visual_scores(v)) + _top_k_mean(self.audio_scores(a))) / 2
        fused = (v + a) / 2
        category = self.category(fused.amax(dim=1)) + POOLED_SHARE * pooled
        gate = (audio_gate * visual_gate).squeeze(-1)
        return CmbsOutput(self.relevance(fused).squeeze(-1), category, gate, pooled)


def _top_k_mean(scores: torch.Tensor) -> torch.Tensor:
    """[B, T, C] -> [B, C]: per category, the mean of its TOP_K highest segment scores."""
    return scores.topk(min(TOP_K, scores.shape[1]), dim=1).values.mean(dim=1)


def cmbs_loss(output: CmbsOutput, label: torch.Tensor, background: int) -> torch.Tensor:
    """The official training loss for per-segment labels [B, T] (`background` where no event):
    BCE of the relevance logits and of the gate against 'the segment holds the event', plus the
    cross-entropy of the category logits and of the pooled scores against the video's event
    (the largest non-background label; 0 when every segment is background, as officially)."""
    relevant = (label != background).to(output.relevance.dtype)
    event = torch.where(label == background, 0, label).amax(dim=1)
    at_least_single = torch.promote_types(output.gate.dtype, torch.float32)
    with torch.autocast(output.gate.device.type, enabled=False):  # BCE on probabilities is unsafe in half
        gate = F.binary_cross_entropy(output.gate.to(at_least_single), relevant.to(at_least_single))
    return (
        F.binary_cross_entropy_with_logits(output.relevance, relevant)
        + gate
        + F.cross_entropy(output.pooled, event)
        + F.cross_entropy(output.category, event)
    )


def cmbs_segment_classes(output: CmbsOutput, background: int) -> torch.Tensor:
    """[B, T] classes as the official evaluation decides them: the video's arg-max category
    where the segment's relevance probability exceeds 0.5, background elsewhere."""
    category = output.category.argmax(dim=-1, keepdim=True).expand_as(output.relevance)
    return torch.where(output.relevance.sigmoid() > 0.5, category, background)
