"""pytest-benchmark timings of one training step per method on the tiny preset.

Not part of the unit tests (the default addopts has --benchmark-skip): run with
`tox -e bench`, i.e. `pytest tests/benchmarks --benchmark-only --benchmark-json=...`.
"""

import pytest
import torch

from bench.presets import get_preset
from bench.profile import ProfileSpec, build_step, resolve_point

METHODS = ["frozen", "lora", "lavish", "dgsct", "mettle", "full"]


@pytest.mark.parametrize("method", METHODS)
def test_train_step_tiny(benchmark, method):
    spec = ProfileSpec(methods=[method], preset="tiny", device="cpu")
    run = resolve_point(spec, method, get_preset("tiny").train["batch_size"], spec.segments)
    step = build_step(run, get_preset("tiny"), torch.device("cpu"))
    optimizer = step.make_optimizer()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step.loss().backward()
        optimizer.step()

    benchmark.extra_info.update(method=method, preset="tiny", batch_size=run.train.batch_size)
    benchmark.pedantic(train_step, rounds=5, warmup_rounds=1)
