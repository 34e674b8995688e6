from __future__ import annotations

import math

import pytest
import torch
from tolerances import gamma

from bench.plan import RunPlan, resolve
from bench.registry import get_task
from bench.tasks.avs import AvsConfig, AvsMs3Config
from bench.tasks.base import DataShape, TaskModel

SMALL = dict(num_train=4, num_val=3, num_test=2)


@pytest.mark.parametrize(("name", "cfg_cls"), [("avs_s4", AvsConfig), ("avs_ms3", AvsMs3Config)])
def test_synthetic_targets_are_pixel_masks_and_frame_weights(name: str, cfg_cls: type, shape: DataShape) -> None:
    """Five frames a video, a mask per frame at the frame size. (Inputs, splits and determinism:
    tests/test_task_contract.py.)"""
    task = get_task(name)
    assert task.spec(cfg_cls()).needs_maps and task.spec(cfg_cls()).kind == "segmentation"
    data = task.synthetic(cfg_cls(**SMALL), shape)
    for split, n in (("train", 4), ("val", 3), ("test", 2)):
        t = data[split].tensors
        assert t.keys() == {"audio", "visual", "mask", "frame_weight"}
        assert t["mask"].shape == (n, 5, 32, 32) and t["mask"].dtype == torch.bool
        assert t["frame_weight"].shape == (n, 5)


def test_s4_train_supervises_first_frame_only(shape: DataShape) -> None:
    data = get_task("avs_s4").synthetic(AvsConfig(**SMALL), shape)
    w = data["train"].tensors["frame_weight"]
    assert torch.equal(w, torch.tensor([[1.0, 0, 0, 0, 0]]).expand(4, 5))
    assert not data["train"].tensors["mask"][:, 1:].any() and data["train"].tensors["mask"][:, 0].any()
    assert (data["val"].tensors["frame_weight"] == 1).all()
    ms3 = get_task("avs_ms3").synthetic(AvsMs3Config(**SMALL), shape)
    assert (ms3["train"].tensors["frame_weight"] == 1).all()


def test_mask_is_the_sounding_object(shape: DataShape) -> None:
    val = get_task("avs_s4").synthetic(AvsConfig(num_train=1, num_val=8, num_test=1), shape)["val"].tensors
    covered = val["mask"].float().mean((-2, -1))
    assert (covered > 0).all() and (covered < 0.5).all()  # one (maybe occluded) object, not the frame


@pytest.mark.parametrize("name", ["avs_s4", "avs_ms3"])
def test_head_decodes_every_level_into_frame_size_masks(name: str, encoder, shape: DataShape) -> None:  # noqa: ANN001
    """The decoder reads every map level and the audio (FiLM), and predictions come back at the
    frame size. (Loss, head gradients and scores on the registered towers: the task contract.)"""
    task = get_task(name)
    cfg = task.config_cls(**SMALL, head_width=8)
    model = TaskModel(encoder, task.head(cfg, encoder))
    data = task.synthetic(cfg, shape)
    batch = data["train"].batches(2)[0]
    out = model(batch["audio"], batch["visual"])
    assert out.shape == (2, 5, 8, 8)  # finest map (stride 4); loss and predictions upsample
    task.loss(out, batch).backward()
    assert all(conv.weight.grad is not None for conv in encoder.maps) and encoder.a.weight.grad is not None
    assert task.predictions(out, batch)["logits"].shape == (2, 5, 32, 32)


def test_loss_ignores_unsupervised_frames(encoder, shape: DataShape) -> None:  # noqa: ANN001
    task = get_task("avs_s4")
    mask = torch.zeros(1, 5, 32, 32, dtype=torch.bool)
    logits = torch.zeros(1, 5, 32, 32)
    logits[:, 1:] = 50.0  # confidently wrong on frames 1..4
    weight = torch.tensor([[1.0, 0, 0, 0, 0]])
    loss = task.loss(logits, {"mask": mask, "frame_weight": weight})
    # log 2 per pixel, averaged over 32 x 32 pixels and weighted over 5 frames in float32: a sum
    # of 1024 terms and a few more roundings; counting the four wrong frames would give 40
    assert loss.item() == pytest.approx(math.log(2), rel=gamma(32 * 32 + 8))


@pytest.mark.parametrize(
    ("field", "value"),
    [("objects", 0), ("offscreen", 2.0), ("max_sources", 9), ("protocol", "per_frame"), ("eval_batch_size", 0)],
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AvsConfig(**{field: value})
    if field == "protocol":
        with pytest.raises(ValueError, match=r"allowed: avsbench, per_video"):
            AvsConfig(protocol=value)


def test_score_follows_the_protocol_and_the_record_keeps_it() -> None:
    # two one-frame videos of 1 x 2 pixels, ground truth [1, 0]: see tests/metrics/test_avs.py
    logits = torch.logit(torch.tensor([[0.9, 0.8], [0.3, 0.2]])).view(2, 1, 1, 2).expand(2, 5, 1, 2)
    preds = {"logits": logits, "mask": torch.tensor([1, 0]).expand(2, 5, 1, 2), "frame_weight": torch.ones(2, 5)}
    task = get_task("avs_s4")
    assert task.score(AvsConfig(), preds)["fscore"] == pytest.approx(78.26, abs=0.01)
    assert task.score(AvsConfig(eval_batch_size=1), preds)["fscore"] == pytest.approx(100.0)
    assert task.score(AvsConfig(protocol="per_video"), preds)["fscore"] == pytest.approx(100.0)
    runs = resolve(RunPlan(["frozen"], ["avs_s4", "avs_ms3"], "smoke", overrides=["avs_ms3.protocol=per_video"]))
    assert [(r.to_dict()["task"]["protocol"], r.to_dict()["task"]["eval_batch_size"]) for r in runs] == [
        ("avsbench", 4),
        ("per_video", 4),
    ]
