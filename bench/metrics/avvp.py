"""Audio-visual video parsing (AVVP / LLP) evaluation, exactly as DESIGN section 7.

Per video: o = video probability >= 0.5; segment predictions per modality are
(segment probability >= 0.5) AND o, as [C, T] binary matrices; AV = audio AND
visual (both for predictions and ground truth). Segment level counts TP/FP/FN
per class over the T segments; event level turns every class row into maximal
runs of ones ("events"): a predicted event is a TP if SOME ground-truth event of
the class overlaps it at IoU >= 0.5, else an FP, and a ground-truth event with no
prediction at IoU >= 0.5 is an FN (not one-to-one). F_c = 2TP / (2TP + FP + FN)
over the classes with any prediction or ground truth; the video score is their
mean (1.0 if there are none). Type@AV = mean(F_audio, F_visual, F_av); Event@AV
pools the audio and visual counts per class before F. Dataset score = mean over
videos x 100.

Keys (all percentages):
  seg_audio, seg_visual, seg_av, seg_type_av, seg_event_av   segment level
  evt_audio, evt_visual, evt_av, evt_type_av, evt_event_av   event level
"""

from __future__ import annotations

import torch

METRIC_KEYS = tuple(
    f"{level}_{kind}" for level in ("seg", "evt") for kind in ("audio", "visual", "av", "type_av", "event_av")
)


def parse_predictions(
    video_prob: torch.Tensor, audio_prob: torch.Tensor, visual_prob: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary audio and visual predictions [N, C, T] from the video probabilities
    [N, C] and per-segment probabilities [N, C, T], gated by the video level."""
    o = (video_prob >= 0.5).unsqueeze(-1)
    return (audio_prob >= 0.5) & o, (visual_prob >= 0.5) & o


def _video_f(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Per-video mean of F_c over the active classes; counts are [N, C]."""
    active = (tp + fp + fn) > 0
    f = (2 * tp).double() / (2 * tp + fp + fn).clamp(min=1).double()
    n_active = active.sum(-1)
    mean = (f * active).sum(-1) / n_active.clamp(min=1)
    return torch.where(n_active > 0, mean, torch.ones_like(mean))


def segment_counts(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class TP, FP, FN [N, C] over the segments of binary [N, C, T] matrices."""
    pred, gt = pred.bool(), gt.bool()
    return (pred & gt).sum(-1), (pred & ~gt).sum(-1), (~pred & gt).sum(-1)


def _runs(x: torch.Tensor) -> torch.Tensor:
    """One-hot masks of the maximal runs of ones of binary [N, C, T]: [N, C, K, T]
    with K = ceil(T / 2) (the most runs a row of length T can hold)."""
    t = x.shape[-1]
    start = x & ~torch.nn.functional.pad(x[..., :-1], (1, 0))
    label = torch.cumsum(start.long(), -1) * x  # 1-based run index, 0 off-run
    k = torch.arange(1, (t + 1) // 2 + 1).view(1, 1, -1, 1)
    return label.unsqueeze(2) == k


def event_counts(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class event-level TP, FP, FN [N, C] of binary [N, C, T] matrices."""
    rp, rg = _runs(pred.bool()), _runs(gt.bool())
    inter = torch.einsum("nckt,ncjt->nckj", rp.long(), rg.long())
    sp, sg = rp.sum(-1), rg.sum(-1)  # run sizes; 0 marks an absent run
    union = sp.unsqueeze(-1) + sg.unsqueeze(-2) - inter
    valid = (sp > 0).unsqueeze(-1) & (sg > 0).unsqueeze(-2)
    match = valid & (2 * inter >= union)  # IoU >= 0.5 in integers
    n_pred, n_gt = (sp > 0).sum(-1), (sg > 0).sum(-1)
    tp = match.any(-1).sum(-1)
    return tp, n_pred - tp, n_gt - match.any(-2).sum(-1)


def avvp_video_scores(
    pred_a: torch.Tensor, pred_v: torch.Tensor, gt_a: torch.Tensor, gt_v: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The ten per-video scores in [0, 1] ([N] each) from binary [N, C, T] matrices."""
    pred_a, pred_v, gt_a, gt_v = pred_a.bool(), pred_v.bool(), gt_a.bool(), gt_v.bool()
    out: dict[str, torch.Tensor] = {}
    for level, counts in (("seg", segment_counts), ("evt", event_counts)):
        ca, cv, cav = counts(pred_a, gt_a), counts(pred_v, gt_v), counts(pred_a & pred_v, gt_a & gt_v)
        fa, fv, fav = _video_f(*ca), _video_f(*cv), _video_f(*cav)
        out[f"{level}_audio"], out[f"{level}_visual"], out[f"{level}_av"] = fa, fv, fav
        out[f"{level}_type_av"] = (fa + fv + fav) / 3
        out[f"{level}_event_av"] = _video_f(*(a + v for a, v in zip(ca, cv, strict=True)))
    return out


def avvp_scores(
    video_prob: torch.Tensor,
    audio_prob: torch.Tensor,
    visual_prob: torch.Tensor,
    gt_audio: torch.Tensor,
    gt_visual: torch.Tensor,
) -> dict[str, float]:
    """Dataset AVVP scores (percent). video_prob [N, C]; audio_prob, visual_prob,
    gt_audio, gt_visual [N, C, T] (probabilities, and binary ground truth)."""
    pred_a, pred_v = parse_predictions(video_prob, audio_prob, visual_prob)
    per_video = avvp_video_scores(pred_a, pred_v, gt_audio, gt_visual)
    return {k: 100.0 * per_video[k].mean().item() for k in METRIC_KEYS}
