"""Audio-visual segmentation (AVSBench) metrics, as DESIGN section 7 and the
AVSBench reference evaluation.

mIoU: pred = sigmoid(logit) > 0.5; per frame intersection over union; a frame
whose ground truth is empty scores its correctly predicted background pixels
over H*W instead; mean over frames.
F-score: beta^2 = 0.3 over 255 thresholds linspace(0, 1 - 1e-10, 255) (float32,
as the reference); frames with empty ground truth are skipped; per video the F
curve is averaged over its remaining frames and maximised over thresholds; mean
over videos. A video with no non-empty frame has no F curve and is left out (the
reference code would count it as 0).
"""

from __future__ import annotations

import torch

BETA2 = 0.3
NUM_THRESHOLDS = 255


def frame_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU [M] of logits and binary ground truth [M, H, W]."""
    pred = torch.sigmoid(logits.float()) > 0.5
    gt = gt.bool()
    inter = (pred & gt).flatten(1).sum(-1)
    union = (pred | gt).flatten(1).sum(-1)
    empty = ~gt.flatten(1).any(-1)
    background = (~pred & ~gt).flatten(1).sum(-1)
    pixels = gt[0].numel()
    return torch.where(empty, background / pixels, inter / union.clamp(min=1))


def miou(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Mean IoU (percent) of logits and ground truth [V, T, H, W] over the frames
    marked in `valid` [V, T] (all frames when None)."""
    iou = frame_iou(logits.flatten(0, 1), gt.flatten(0, 1))
    if valid is not None:
        iou = iou[valid.flatten().bool()]
    return 100.0 * iou.mean().item()


def frame_f_curves(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """F-measure curves [M, 255] of logits and binary ground truth [M, H, W].

    Counts pixels at or above each threshold from one histogram per frame
    instead of 255 comparisons."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    pos = gt.bool().flatten(1)
    th = torch.linspace(0, 1 - 1e-10, NUM_THRESHOLDS)
    bucket = torch.bucketize(prob, th, right=True)  # number of thresholds <= p
    m = prob.shape[0]
    hist = torch.zeros(m, NUM_THRESHOLDS + 1, dtype=torch.float64)
    hist_tp = torch.zeros_like(hist)
    hist.scatter_add_(1, bucket, torch.ones_like(prob, dtype=torch.float64))
    hist_tp.scatter_add_(1, bucket, pos.double())
    # pixels with p >= th[i] are those whose bucket is > i
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    tp = hist_tp.flip(1).cumsum(1).flip(1)[:, 1:]
    precision = tp / (above + 1e-20)
    recall = tp / (pos.sum(-1, keepdim=True).double() + 1e-20)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


def fscore(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """F-score (percent) of logits and ground truth [V, T, H, W]; frames outside
    `valid` [V, T] or with empty ground truth are skipped."""
    v = gt.shape[0]
    keep = gt.flatten(2).bool().any(-1)
    if valid is not None:
        keep &= valid.bool()
    scores = []
    for i in range(v):
        if keep[i].any():
            curves = frame_f_curves(logits[i][keep[i]], gt[i][keep[i]])
            scores.append(curves.mean(0).max())
    if not scores:
        return 0.0
    return 100.0 * torch.stack(scores).mean().item()
