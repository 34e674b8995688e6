"""Hand-computed AVS mIoU and F-score cases, per video and as AVSBench's test script pools them."""

from __future__ import annotations

import pytest
import torch

from bench.metrics.avs import avsbench_scores, frame_f_curves, frame_iou, fscore, miou

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


def f_measure(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r)


def videos(*frames: tuple[list[float], list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-frame videos of 1 x 2 pixels from (probabilities, ground truth) pairs: logits,
    masks [V, 1, 1, 2] and an all-true `valid` [V, 1]."""
    prob = torch.tensor([p for p, _ in frames]).view(-1, 1, 1, 2)
    gt = torch.tensor([g for _, g in frames]).view(-1, 1, 1, 2)
    return torch.logit(prob), gt, torch.ones(len(frames), 1, dtype=torch.bool)


def test_avsbench_pools_the_f_curves_of_a_batch_before_the_max() -> None:
    logits, gt, valid = videos(([0.9, 0.8], [1, 0]), ([0.3, 0.2], [1, 0]))
    # each video alone is perfect at a threshold in (0.8, 0.9], resp. (0.2, 0.3]: per video 100
    assert fscore(logits, gt, valid) == pytest.approx(100.0)
    assert avsbench_scores(logits, gt, valid, batch_size=1)["fscore"] == pytest.approx(100.0)
    # one batch: (0.2, 0.3] scores (1 + F(1/2, 1)) / 2 = (1 + 0.65 / 1.15) / 2, the best of the mean curve
    pooled = (1 + f_measure(0.5, 1.0)) / 2
    assert pooled == pytest.approx(0.7826, abs=1e-4)
    assert avsbench_scores(logits, gt, valid, batch_size=4)["fscore"] == pytest.approx(100 * pooled, rel=1e-6)


def test_avsbench_miou_is_a_mean_of_batch_means() -> None:
    # IoU at 0.5: video 1 predicts both pixels (1/2), video 2 none (0), video 3 is exact (1)
    logits, gt, valid = videos(([0.9, 0.8], [1, 0]), ([0.3, 0.2], [1, 0]), ([0.9, 0.1], [1, 0]))
    assert miou(logits, gt, valid) == pytest.approx(100 * (0.5 + 0 + 1) / 3)  # per_video: every frame alike
    scores = avsbench_scores(logits, gt, valid, batch_size=2)  # batches {1, 2} and {3}
    assert scores["miou"] == pytest.approx(100 * ((0.5 + 0) / 2 + 1) / 2)  # 62.5
    assert scores["fscore"] == pytest.approx(100 * ((1 + f_measure(0.5, 1.0)) / 2 + 1) / 2, rel=1e-6)


def test_an_all_empty_video_counts_as_avsbench_counts_it() -> None:
    # video 1 exact; video 2 has no object and predicts one of its two pixels: IoU = 1/2 background right
    logits, gt, valid = videos(([0.9, 0.1], [1, 0]), ([0.2, 0.7], [0, 0]))
    alone = avsbench_scores(logits, gt, valid, batch_size=1)  # a batch of only empty masks scores F = 0
    assert alone == pytest.approx({"miou": 100 * (1 + 0.5) / 2, "fscore": (100 + 0) / 2})
    together = avsbench_scores(logits, gt, valid, batch_size=4)  # within a batch, empty frames are skipped
    assert together == pytest.approx({"miou": 75.0, "fscore": 100.0})
    assert fscore(logits, gt, valid) == pytest.approx(100.0)  # per_video leaves the empty video out


def test_avsbench_scores_match_a_plain_loop_over_batches_frames_and_thresholds() -> None:
    """Random masks, some empty, some frames not supervised, a last short batch."""
    gen = torch.Generator().manual_seed(0)
    v, t, batch = 7, 3, 3
    logits = torch.randn(v, t, 4, 4, generator=gen) * 2
    gt = torch.rand(v, t, 4, 4, generator=gen) > 0.6
    gt[1] = False
    gt[4, 0] = False
    valid = torch.rand(v, t, generator=gen) > 0.2
    valid[:, 0] = True
    th = torch.linspace(0, 1 - 1e-10, 255)
    # Both sides take float32 sigmoids, each within 3 ulp (3 * 2**-24 below 1) of the exact one;
    # every probability keeps 4.4e-7 from every threshold, so both bucket every pixel alike.
    assert (torch.sigmoid(logits.double()).flatten()[:, None] - th.double()).abs().min() > 2 * 3 * 2**-24
    mious, fs = [], []
    for s in range(0, v, batch):
        ious, curves = [], []
        for i in range(s, min(s + batch, v)):
            for j in range(t):
                if not valid[i, j]:
                    continue
                prob, g = torch.sigmoid(logits[i, j]), gt[i, j].float()
                pred = (prob > 0.5).float()
                if g.sum() == 0:
                    ious.append(((1 - pred) * (1 - g)).sum().item() / g.numel())
                    continue
                ious.append((pred * g).sum().item() / torch.maximum(pred, g).sum().item())
                curve = []
                for k in range(255):
                    above = (prob >= th[k]).float()
                    p, r = (above * g).sum() / (above.sum() + 1e-20), (above * g).sum() / g.sum()
                    f = (1.3 * p * r / (0.3 * p + r)).item()
                    curve.append(0.0 if f != f else f)
                curves.append(curve)
        mious.append(sum(ious) / len(ious))
        fs.append(max(sum(c[k] for c in curves) / len(curves) for k in range(255)) if curves else 0.0)
    scores = avsbench_scores(logits, gt, valid, batch)
    # a mean of at most 9 float32 IoUs, each one division: within 10 u = 6e-7 relative
    assert scores["miou"] == pytest.approx(100 * sum(mious) / len(mious), rel=1e-6)
    assert scores["fscore"] == pytest.approx(100 * sum(fs) / len(fs), rel=1e-5)
