"""Hand-computed AVVP cases (DESIGN section 7)."""

from __future__ import annotations

import pytest
import torch

from bench.metrics.avvp import METRIC_KEYS, avvp_scores, avvp_video_scores, event_counts

C, T = 25, 10


def row(*spans: tuple[int, int]) -> torch.Tensor:
    x = torch.zeros(T, dtype=torch.bool)
    for s, e in spans:
        x[s:e] = True
    return x


def mats(**rows: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Binary [1, C, T] matrices from {name: {class: row}}."""
    out = {}
    for name, by_class in rows.items():
        m = torch.zeros(1, C, T, dtype=torch.bool)
        for c, r in by_class.items():
            m[0, c] = r
        out[name] = m
    return out


def test_no_events_no_predictions_is_perfect() -> None:
    z = torch.zeros(2, C, T)
    scores = avvp_scores(torch.zeros(2, C), z, z, z, z)
    assert set(scores) == set(METRIC_KEYS)
    assert all(v == pytest.approx(100.0) for v in scores.values())


def test_one_prediction_over_two_gt_events() -> None:
    """A predicted event is a TP if SOME GT event matches it. (In one dimension a run
    cannot reach IoU >= 0.5 with two disjoint runs, so each prediction matches at most one.)"""
    # GT has two runs [0,2) and [3,5); pred [0,4) -> IoU with [0,2) = 2/4 (match), with [3,5) = 1/5.
    m = mats(p={0: row((0, 4))}, g={0: row((0, 2), (3, 5))})
    tp, fp, fn = event_counts(m["p"], m["g"])
    assert (tp[0, 0].item(), fp[0, 0].item(), fn[0, 0].item()) == (1, 0, 1)
    # pred [0,5) overlaps both GT runs: IoU 2/5 and 2/5 -> no match at all
    m = mats(p={0: row((0, 5))}, g={0: row((0, 2), (3, 5))})
    assert [x[0, 0].item() for x in event_counts(m["p"], m["g"])] == [0, 1, 2]
    # two predicted runs over one GT run: [0,2) matches (IoU 2/4), [3,4) does not (1/4)
    m = mats(p={0: row((0, 2), (3, 4))}, g={0: row((0, 4))})
    assert [x[0, 0].item() for x in event_counts(m["p"], m["g"])] == [1, 1, 0]


@pytest.mark.parametrize(
    ("pred", "gt", "counts"),
    [
        ((0, 4), (0, 2), (1, 0, 0)),  # IoU exactly 0.5 -> match
        ((0, 5), (0, 2), (0, 1, 1)),  # IoU 0.4 -> no match
        ((0, 3), (0, 2), (1, 0, 0)),  # IoU 0.67
        ((1, 8), (4, 10), (0, 1, 1)),  # inter 4, union 9 -> 0.44
        ((2, 8), (4, 10), (1, 0, 0)),  # inter 4, union 8 -> 0.5
    ],
)
def test_event_iou_threshold(pred: tuple[int, int], gt: tuple[int, int], counts: tuple[int, int, int]) -> None:
    m = mats(p={3: row(pred)}, g={3: row(gt)})
    assert tuple(x[0, 3].item() for x in event_counts(m["p"], m["g"])) == counts


def test_event_pooling_differs_from_type() -> None:
    # class 0: audio pred == GT [0,10) -> audio F = 1; visual pred [0,10), visual GT none -> visual F = 0
    # class 1: visual GT [0,5), no prediction -> visual: class 0 F 0, class 1 F 0 -> F_v = 0
    m = mats(pa={0: row((0, 10))}, pv={0: row((0, 10))}, ga={0: row((0, 10))}, gv={1: row((0, 5))})
    s = avvp_video_scores(m["pa"], m["pv"], m["ga"], m["gv"])
    # segment level: F_a = 1; F_v: class 0 (TP 0, FP 10) -> 0, class 1 (FN 5) -> 0 => 0
    # AV: pred class 0 [0,10), GT_av empty -> F_av = 0. Type = (1 + 0 + 0) / 3
    assert s["seg_audio"].item() == pytest.approx(1.0)
    assert s["seg_visual"].item() == pytest.approx(0.0)
    assert s["seg_av"].item() == pytest.approx(0.0)
    assert s["seg_type_av"].item() == pytest.approx(1 / 3)
    # pooled: class 0 TP 10, FP 10, FN 0 -> 20/30; class 1 TP 0, FN 5 -> 0; mean = 1/3 ... use event level too
    assert s["seg_event_av"].item() == pytest.approx((20 / 30 + 0) / 2)
    # event level: audio 1 TP; visual class 0 1 FP, class 1 1 FN; pooled class 0: TP1 FP1 -> 2/3, class 1 -> 0
    assert s["evt_type_av"].item() == pytest.approx(1 / 3)
    assert s["evt_event_av"].item() == pytest.approx((2 / 3) / 2)


def test_video_level_gate() -> None:
    high = torch.ones(1, C, T)
    gt = torch.zeros(1, C, T)
    gt[0, 4, :3] = 1
    gated = avvp_scores(torch.full((1, C), 0.4), high, high, gt, gt)
    # no prediction survives the gate: class 4 is a pure FN for audio and visual -> F = 0
    assert gated["seg_audio"] == pytest.approx(0.0)
    video = torch.zeros(1, C)
    video[0, 4] = 0.9
    seg = torch.zeros(1, C, T)
    seg[0, 4, :3] = 0.8
    seg[0, 7, :3] = 0.8  # high segment prob, but class 7 has video prob 0 -> dropped
    scores = avvp_scores(video, seg, seg, gt, gt)
    assert all(v == pytest.approx(100.0) for v in scores.values())


def test_dataset_score_is_mean_over_videos_in_percent() -> None:
    gt = torch.zeros(2, C, T)
    gt[:, 0, :5] = 1
    seg = torch.zeros(2, C, T)
    seg[0, 0, :5] = 1  # video 0 perfect, video 1 predicts nothing -> 0
    scores = avvp_scores(torch.ones(2, C), seg, seg, gt, gt)
    assert scores["seg_audio"] == pytest.approx(50.0)
    assert scores["evt_av"] == pytest.approx(50.0)


def _naive_f(pred: list[list[int]], gt: list[list[int]], events: bool) -> tuple[list[int], list[int], list[int]]:
    """Loop-per-class counts written from the DESIGN text, for a randomised cross-check."""

    def runs(r: list[int]) -> list[set[int]]:
        out, cur = [], set()
        for t, x in enumerate(r + [0]):
            if x:
                cur.add(t)
            elif cur:
                out.append(cur)
                cur = set()
        return out

    tps, fps, fns = [], [], []
    for p, g in zip(pred, gt, strict=True):
        if not events:
            tps.append(sum(a and b for a, b in zip(p, g, strict=True)))
            fps.append(sum(a and not b for a, b in zip(p, g, strict=True)))
            fns.append(sum(b and not a for a, b in zip(p, g, strict=True)))
            continue
        rp, rg = runs(p), runs(g)
        hit = lambda x, y: len(x & y) / len(x | y) >= 0.5  # noqa: E731
        tp = sum(any(hit(x, y) for y in rg) for x in rp)
        tps.append(tp)
        fps.append(len(rp) - tp)
        fns.append(sum(not any(hit(y, x) for x in rp) for y in rg))
    return tps, fps, fns


def _f(tp: list[int], fp: list[int], fn: list[int]) -> float:
    fs = [2 * a / (2 * a + b + c) for a, b, c in zip(tp, fp, fn, strict=True) if a + b + c > 0]
    return sum(fs) / len(fs) if fs else 1.0


def test_matches_loop_implementation_on_random_videos() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 12
    pa, pv, ga, gv = (torch.rand(n, C, T, generator=gen) < 0.15 for _ in range(4))
    fast = avvp_video_scores(pa, pv, ga, gv)
    for i in range(n):
        for level, ev in (("seg", False), ("evt", True)):
            ca = _naive_f(pa[i].int().tolist(), ga[i].int().tolist(), ev)
            cv = _naive_f(pv[i].int().tolist(), gv[i].int().tolist(), ev)
            cav = _naive_f((pa[i] & pv[i]).int().tolist(), (ga[i] & gv[i]).int().tolist(), ev)
            pooled = [[a + b for a, b in zip(x, y, strict=True)] for x, y in zip(ca, cv, strict=True)]
            assert fast[f"{level}_audio"][i].item() == pytest.approx(_f(*ca))
            assert fast[f"{level}_visual"][i].item() == pytest.approx(_f(*cv))
            assert fast[f"{level}_av"][i].item() == pytest.approx(_f(*cav))
            assert fast[f"{level}_type_av"][i].item() == pytest.approx((_f(*ca) + _f(*cv) + _f(*cav)) / 3)
            assert fast[f"{level}_event_av"][i].item() == pytest.approx(_f(*pooled))
