from __future__ import annotations

import pytest
import torch

from bench.data.synthetic import SHAPES
from bench.tasks.ave import BACKGROUND, NUM_EVENTS, AveConfig, _near_miss, make_synthetic_ave
from bench.tasks.base import DataShape

COLS = len(SHAPES)  # category = colour (or pattern) * 7 + shape (or pitch)


def test_near_miss_shares_exactly_one_factor_and_covers_the_rest() -> None:
    gen = torch.Generator().manual_seed(0)
    cat = torch.arange(NUM_EVENTS).repeat(200)
    seen_like = _near_miss(gen, cat, share_row=True)  # same colour, other shape
    heard_like = _near_miss(gen, cat, share_row=False)  # same pitch, other pattern
    for other in (seen_like, heard_like):
        assert ((other >= 0) & (other < NUM_EVENTS) & (other != cat)).all()
    assert torch.equal(seen_like // COLS, cat // COLS) and (seen_like % COLS != cat % COLS).all()
    assert torch.equal(heard_like % COLS, cat % COLS) and (heard_like // COLS != cat // COLS).all()
    # every other shape of the colour, and every other pattern of the pitch, occurs
    first = cat == 0
    assert set(seen_like[first].tolist()) == set(range(1, COLS))
    assert set(heard_like[first].tolist()) == {COLS, 2 * COLS, 3 * COLS}


def test_ave_labels_and_near_miss_switch_changes_only_the_distractors() -> None:
    shape = DataShape(image_size=16, sample_rate=2000)
    near = make_synthetic_ave(AveConfig(segments=5, near_miss=1.0), 30, shape, seed=3).tensors
    far = make_synthetic_ave(AveConfig(segments=5, near_miss=0.0), 30, shape, seed=3).tensors
    label = near["label"]
    assert label.shape == (30, 5) and ((label >= 0) & (label <= BACKGROUND)).all()
    assert (label == BACKGROUND).any() and (label < BACKGROUND).any()
    assert torch.equal(label, far["label"])  # same events, intervals and agreement
    assert not torch.equal(near["visual"], far["visual"]) and not torch.equal(near["audio"], far["audio"])


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_near_miss_must_be_a_probability(value: float) -> None:
    with pytest.raises(ValueError, match="near_miss must be in \\[0, 1\\]"):
        AveConfig(near_miss=value)


def test_one_segment_clips_are_generated() -> None:
    shape = DataShape(image_size=16, sample_rate=800)
    data = make_synthetic_ave(AveConfig(segments=1), 40, shape, seed=0).tensors
    assert data["label"].shape == (40, 1) and data["audio"].shape[:2] == data["visual"].shape[:2] == (40, 1)
    assert (data["label"] < BACKGROUND).all()  # the seen and heard intervals both fill a one-segment clip
