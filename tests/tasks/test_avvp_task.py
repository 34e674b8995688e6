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


def test_synthetic_shapes_dtypes_and_determinism(shape: DataShape) -> None:
    task = get_task("avvp")
    data = task.synthetic(AvvpConfig(**SMALL), shape)
    assert set(data["train"].tensors) == {"audio", "visual", "label"}  # weak labels only
    for split, n in (("train", 6), ("val", 4), ("test", 5)):
        t = data[split].tensors
        assert t["audio"].shape == (n, 10, 2000) and t["audio"].dtype == torch.float32
        assert t["visual"].shape == (n, 10, 3, 32, 32) and t["visual"].dtype == torch.float32
        assert t["label"].shape == (n, 25) and t["label"].dtype == torch.float32
        assert (t["label"].sum(-1) >= 1).all()
    val = data["val"].tensors
    assert val["gt_audio"].shape == val["gt_visual"].shape == (4, 25, 10)
    assert torch.equal((val["gt_audio"] | val["gt_visual"]).any(-1).float(), val["label"])
    again = task.synthetic(AvvpConfig(**SMALL), shape)
    for split in data:
        for k, v in data[split].tensors.items():
            assert torch.equal(v, again[split].tensors[k])
    other = task.synthetic(AvvpConfig(**SMALL, data_seed=1), shape)
    assert not torch.equal(other["train"].tensors["audio"], data["train"].tensors["audio"])


def test_synthetic_has_audio_only_visual_only_and_av_events(shape: DataShape) -> None:
    val = get_task("avvp").synthetic(AvvpConfig(num_train=1, num_val=60, num_test=1), shape)["val"].tensors
    a, v = val["gt_audio"].any(-1), val["gt_visual"].any(-1)
    assert (a & ~v).any() and (v & ~a).any() and (a & v).any()


def test_head_shapes_backward_and_weak_loss(encoder, shape: DataShape) -> None:  # noqa: ANN001
    task = get_task("avvp")
    cfg = AvvpConfig(**SMALL, head_hidden=16, head_heads=2)
    model = TaskModel(encoder, task.head(cfg, encoder))
    data = task.synthetic(cfg, shape)
    batch = data["train"].batches(3)[0]
    out = model(batch["audio"], batch["visual"])
    assert out["video"].shape == (3, 25) and out["audio"].shape == out["visual"].shape == (3, 10, 25)
    assert ((out["video"] >= 0) & (out["video"] <= 1)).all()
    loss = task.loss(out, batch)  # the train batch has no segment ground truth: loss must not need it
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert encoder.a.weight.grad is not None
    val = data["val"].batches(4)[0]
    preds = task.predictions(model(val["audio"], val["visual"]), val)
    scores = task.score(cfg, preds)
    assert set(scores) == set(task.metric_keys) and task.selection_metric in scores
    assert all(0.0 <= s <= 100.0 for s in scores.values())
    with pytest.raises(ValueError, match="ground truth"):
        task.score(cfg, task.predictions(out, batch))


@pytest.mark.parametrize(
    ("field", "value"), [("num_train", 0), ("audio_only", 1.5), ("max_events", 26), ("head_heads", 3)]
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AvvpConfig(**{field: value})
