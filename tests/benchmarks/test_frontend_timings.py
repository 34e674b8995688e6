"""pytest-benchmark timings of the audio front-ends on a batch of 80 one-second segments, at
each input rate (the front-end resamples first where its tower's rate differs). Not part of
the unit tests: run with `tox -e bench`."""

import pytest
import torch

from bench.frontends import FbankFrontend, LogMelFrontend

FRONTENDS = {
    "htsat": lambda rate: LogMelFrontend(32000, 1024, 320, 64, 50.0, 14000.0, input_rate=rate),
    "lavish_swin": lambda rate: FbankFrontend(
        16000, 192, 5.2, 192, -4.984795570373535, 3.7079780101776123, input_rate=rate
    ),
    "lavish_vit": lambda rate: FbankFrontend(16000, 128, 10, 102, -4.1426, 3.2001, input_rate=rate),
}


@pytest.mark.parametrize("rate", [8000, 16000, 32000])
@pytest.mark.parametrize("name", list(FRONTENDS))
def test_frontend_batch_of_80(benchmark, name, rate):
    frontend = FRONTENDS[name](rate)
    wave = 0.1 * torch.randn(80, rate, generator=torch.Generator().manual_seed(0))
    benchmark.extra_info.update(frontend=name, input_rate=rate, batch=80, threads=torch.get_num_threads())
    benchmark.pedantic(frontend, args=(wave,), rounds=20, warmup_rounds=2)
