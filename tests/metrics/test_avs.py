"""Hand-computed AVS mIoU and F-score cases."""

from __future__ import annotations

import pytest
import torch

from bench.metrics.avs import frame_f_curves, frame_iou, fscore, miou

BIG = 20.0  # logit whose sigmoid is 1.0 in float32


def test_miou_known_case() -> None:
    gt = torch.zeros(1, 2, 2, 2)
    gt[0, 0, 0] = 1  # frame 0: top row
    gt[0, 1] = 1  # frame 1: all
    logits = torch.full((1, 2, 2, 2), -BIG)
    logits[0, 0, 0, 0] = BIG  # frame 0: 1 of 2 GT pixels -> IoU 1/2
    logits[0, 1, :, :] = BIG  # frame 1: perfect -> 1
    assert miou(logits, gt) == pytest.approx(75.0)
    assert miou(logits, gt, valid=torch.tensor([[True, False]])) == pytest.approx(50.0)


def test_empty_gt_scores_background_pixels() -> None:
    gt = torch.zeros(1, 2, 2)
    logits = torch.full((1, 2, 2), -BIG)
    logits[0, 0, 0] = BIG  # one false positive of four pixels
    assert frame_iou(logits, gt).item() == pytest.approx(3 / 4)
    assert frame_iou(torch.full((1, 2, 2), -BIG), gt).item() == pytest.approx(1.0)


def test_fscore_threshold_max_per_video() -> None:
    # one frame, 4 pixels, GT = first two. probabilities 0.9, 0.3 (GT) and 0.6, 0.1 (background)
    prob = torch.tensor([0.9, 0.3, 0.6, 0.1]).view(1, 1, 2, 2)
    logits = torch.logit(prob)
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)

    def f(p: float, r: float) -> float:
        return 1.3 * p * r / (0.3 * p + r)

    # thresholds <= 0.1: P 2/4, R 1; (0.1, 0.3]: P 2/3, R 1; (0.3, 0.6]: P 1/2, R 1/2; (0.6, 0.9]: P 1, R 1/2
    best = max(f(0.5, 1), f(2 / 3, 1), f(0.5, 0.5), f(1, 0.5))
    assert best == pytest.approx(f(1, 0.5))
    assert fscore(logits, gt) == pytest.approx(100 * best, rel=1e-5)
    curve = frame_f_curves(logits[0], gt[0])
    assert curve.shape == (1, 255)
    assert curve[0, -1].item() == 0.0  # threshold ~1: nothing predicted -> NaN -> 0


def test_fscore_averages_curves_within_video_and_skips_empty_frames() -> None:
    prob = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).view(1, 2, 1, 2)
    gt = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 2, 1, 2)
    logits = torch.logit(prob)
    curves = frame_f_curves(logits[0], gt[0])
    expected = 100 * curves.mean(0).max().item()
    assert fscore(logits, gt) == pytest.approx(expected)
    # a video whose extra frame has empty GT: the empty frame changes nothing
    logits3 = torch.cat([logits, torch.full((1, 1, 1, 2), BIG)], 1)
    gt3 = torch.cat([gt, torch.zeros(1, 1, 1, 2)], 1)
    assert fscore(logits3, gt3) == pytest.approx(expected)
    # mean over videos: a second, perfect video
    perfect = torch.tensor([[BIG, -BIG]]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    perfect_gt = gt3.new_tensor([1.0, 0.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    two = fscore(torch.cat([logits3, perfect]), torch.cat([gt3, perfect_gt]))
    assert two == pytest.approx((expected + 100) / 2)
