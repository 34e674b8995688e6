from __future__ import annotations

import pytest
import torch

from bench.data.llp import LLP_CLASSES
from bench.registry import get_task
from bench.tasks.avvp import AvvpConfig
from bench.tasks.base import DataShape, TaskModel

SMALL = dict(num_train=6, num_val=4, num_test=5)


def test_classes_in_design_order() -> None:
    assert len(LLP_CLASSES) == 25 and LLP_CLASSES[0] == "Speech" and LLP_CLASSES[-1] == "Clapping"
    assert LLP_CLASSES[5] == "Frying_(food)" and LLP_CLASSES[22] == "Baby_cry_infant_cry"


def test_synthetic_targets_are_weak_on_train_and_per_segment_elsewhere(shape: DataShape) -> None:
    """(Inputs, splits and determinism: tests/test_task_contract.py.)"""
    data = get_task("avvp").synthetic(AvvpConfig(**SMALL), shape)
    assert set(data["train"].tensors) == {"audio", "visual", "label"}  # weak labels only
    for split, n in (("train", 6), ("val", 4), ("test", 5)):
        t = data[split].tensors
        assert t["label"].shape == (n, 25) and t["label"].dtype == torch.float32
        assert (t["label"].sum(-1) >= 1).all()
    for split, n in (("val", 4), ("test", 5)):
        t = data[split].tensors
        assert t["gt_audio"].shape == t["gt_visual"].shape == (n, 25, 10)
        assert torch.equal((t["gt_audio"] | t["gt_visual"]).any(-1).float(), t["label"])


def test_synthetic_has_audio_only_visual_only_and_av_events(shape: DataShape) -> None:
    val = get_task("avvp").synthetic(AvvpConfig(num_train=1, num_val=60, num_test=1), shape)["val"].tensors
    a, v = val["gt_audio"].any(-1), val["gt_visual"].any(-1)
    assert (a & ~v).any() and (v & ~a).any() and (a & v).any()


def test_head_parses_each_modality_and_train_preds_cannot_be_scored(encoder, shape: DataShape) -> None:  # noqa: ANN001
    """Video-level probabilities and per-segment ones for each modality; the weak loss reaches
    the encoder through both. (Loss, head gradients and scores on the registered towers: the
    task contract.)"""
    task = get_task("avvp")
    cfg = AvvpConfig(**SMALL, head_hidden=16, head_heads=2)
    model = TaskModel(encoder, task.head(cfg, encoder))
    batch = task.synthetic(cfg, shape)["train"].batches(3)[0]
    out = model(batch["audio"], batch["visual"])
    assert out["video"].shape == (3, 25) and out["audio"].shape == out["visual"].shape == (3, 10, 25)
    assert ((out["video"] >= 0) & (out["video"] <= 1)).all()
    task.loss(out, batch).backward()  # the train batch has no segment ground truth: loss must not need it
    assert encoder.a.weight.grad is not None and encoder.v.weight.grad is not None
    with pytest.raises(ValueError, match="ground truth"):
        task.score(cfg, task.predictions(out, batch))


@pytest.mark.parametrize(
    ("field", "value"), [("num_train", 0), ("audio_only", 1.5), ("max_events", 26), ("head_heads", 3)]
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AvvpConfig(**{field: value})
