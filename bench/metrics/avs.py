"""Audio-visual segmentation (AVSBench) metrics, under two protocols.

mIoU: pred = sigmoid(logit) > 0.5; per frame intersection over union; a frame
whose ground truth is empty scores its correctly predicted background pixels
over H*W instead.
F-score: beta^2 = 0.3 over 255 thresholds linspace(0, 1 - 1e-10, 255) (float32,
as the reference); a group of frames has one F curve, the mean of the curves of
its frames with non-empty ground truth, maximised over thresholds.

`avsbench` (the published numbers): AVSBench's released test script (test.sh,
test batch size 4, no shuffling) scores each batch of consecutive videos once:
the batch's mean frame IoU, and the F of all its frames pooled; a batch whose
every mask is empty scores F = 0. Both are then averaged over batches, so that
the batch size changes the result. `per_video`: mIoU is the mean over all frames;
F is taken per video and averaged over videos, a video without a non-empty mask
left out.
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


def pooled_f(logits: torch.Tensor, gt: torch.Tensor) -> float | None:
    """The F of frames [M, H, W] pooled: the best threshold of their mean F curve, over
    the frames with non-empty ground truth; None when there are none."""
    nonempty = gt.flatten(1).bool().any(-1)
    if not nonempty.any():
        return None
    return frame_f_curves(logits[nonempty], gt[nonempty]).mean(0).max().item()


def fscore(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Per-video F-score (percent) of logits and ground truth [V, T, H, W], over the
    frames marked in `valid` [V, T]; videos without a non-empty mask are left out."""
    keep = torch.ones(gt.shape[:2], dtype=torch.bool) if valid is None else valid.bool()
    scores = [f for i in range(gt.shape[0]) if (f := pooled_f(logits[i][keep[i]], gt[i][keep[i]])) is not None]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def _mean(values: list[float]) -> float:
    return torch.tensor(values, dtype=torch.float64).mean().item()  # NaN for an empty split, as `miou`


def avsbench_batches(
    logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, batch_size: int
) -> dict[str, list[float]]:
    """mIoU and F (fractions) of each batch of `batch_size` consecutive videos [V, T, H, W]
    (frames marked in `valid` [V, T]), as AVSBench's test script computes them: the batch's
    mean frame IoU, and the F of its frames pooled (0 for a batch without a non-empty mask)."""
    mious, fs = [], []
    for s in range(0, gt.shape[0], batch_size):
        keep = valid[s : s + batch_size].bool()
        batch_logits, batch_gt = logits[s : s + batch_size][keep], gt[s : s + batch_size][keep]
        mious.append(frame_iou(batch_logits, batch_gt).mean().item())
        fs.append(pooled_f(batch_logits, batch_gt) or 0.0)
    return {"miou": mious, "fscore": fs}


def avsbench_scores(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, batch_size: int) -> dict[str, float]:
    """mIoU and F-score (percent) as AVSBench's test script computes them: the mean over
    batches of `avsbench_batches`."""
    batches = avsbench_batches(logits, gt, valid, batch_size)
    return {"miou": 100.0 * _mean(batches["miou"]), "fscore": 100.0 * _mean(batches["fscore"])}
