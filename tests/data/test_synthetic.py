"""Pre-training primitives are disjoint from the downstream classes, and their labels
say what was drawn."""

import torch

from bench.data.synthetic import (
    PATTERNS,
    SCENE_HUES,
    SCENE_ORIENTATIONS,
    SCENE_SHAPES,
    SHAPES,
    SOURCE_PATTERNS,
    SOURCE_PITCHES,
    _shape_mask,
    render_scene,
    render_sources,
)


def test_pretraining_vocabulary_shares_no_shape_and_no_glide_or_pulse_with_downstream():
    assert set(SCENE_SHAPES).isdisjoint(SHAPES)
    assert set(SOURCE_PATTERNS) & set(PATTERNS) == {"steady"}  # no pulse, no rising or falling glide


def test_every_pretraining_shape_draws_a_distinct_nonempty_mask():
    c = (torch.arange(32) + 0.5) / 32
    kinds = torch.arange(len(SCENE_SHAPES))
    r = torch.full((len(kinds), 1, 1), 0.3)
    masks = _shape_mask(kinds, c.view(1, 32, 1) - 0.5, c.view(1, 1, 32) - 0.5, r, SCENE_SHAPES)
    assert masks.shape == (len(SCENE_SHAPES), 32, 32)
    assert (masks.flatten(1).sum(1) > 20).all()
    assert len({m.numpy().tobytes() for m in masks}) == len(SCENE_SHAPES)


def test_render_scene_labels_match_counts_and_one_orientation():
    frames, shapes, hues, orientation = render_scene(torch.Generator().manual_seed(0), 64, 32)
    assert frames.shape == (64, 3, 32, 32)
    assert shapes.shape == (64, len(SCENE_SHAPES)) and hues.shape == (64, SCENE_HUES)
    assert orientation.shape == (64, SCENE_ORIENTATIONS) and (orientation.sum(1) == 1).all()
    assert ((shapes.sum(1) >= 1) & (shapes.sum(1) <= 3)).all()  # 1-3 objects, kinds may repeat
    assert ((hues.sum(1) >= 1) & (hues.sum(1) <= 3)).all()


def test_render_sources_is_deterministic_and_silent_when_no_source_is_labelled():
    a = render_sources(torch.Generator().manual_seed(1), 32, 32, 32)
    b = render_sources(torch.Generator().manual_seed(1), 32, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    spec, pitches, patterns = a
    assert pitches.shape == (32, SOURCE_PITCHES) and patterns.shape == (32, len(SOURCE_PATTERNS))
    assert ((pitches.sum(1) == 0) == (patterns.sum(1) == 0)).all()
