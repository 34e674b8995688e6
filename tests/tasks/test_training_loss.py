"""What a training step minimises: the task's loss plus the auxiliary loss an encoder hands over
in AVFeatures (a router's load-balancing term), added by `training_loss` for every task."""

from __future__ import annotations

import torch
from conftest import FakeEncoder
from torch import nn

from bench.registry import get_task
from bench.tasks.ave import AveConfig
from bench.tasks.base import DataShape, TaskModel, training_loss
from mettle_core.interface import AVFeatures


class AuxEncoder(FakeEncoder):
    """The fake encoder, handing over 0.5 * w^2 as its auxiliary loss."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> AVFeatures:
        feats = super().forward(audio, visual)
        feats.aux_loss = 0.5 * self.w.square()
        return feats


def test_the_training_loss_adds_the_encoders_auxiliary_loss(shape: DataShape) -> None:
    task, cfg = get_task("ave"), AveConfig(num_train=4, num_val=1, num_test=1, segments=3)
    batch = task.synthetic(cfg, shape)["train"].tensors
    torch.manual_seed(0)
    encoder = AuxEncoder()
    model = TaskModel(encoder, task.head(cfg, encoder))
    plain = task.loss(model(batch["audio"], batch["visual"]), batch)
    loss = training_loss(task, model, batch)
    torch.testing.assert_close(loss, plain + 4.5, rtol=0, atol=0)
    loss.backward()
    assert encoder.w.grad is not None and encoder.w.grad.item() == 3.0  # d(0.5 w^2)/dw

    plain_encoder = FakeEncoder()
    without = TaskModel(plain_encoder, task.head(cfg, plain_encoder))
    output, aux = without(batch["audio"], batch["visual"], with_aux=True)
    assert aux is None
    assert torch.equal(training_loss(task, without, batch), task.loss(output, batch))
