"""The resampler of the audio front-ends (bench/frontends.py)."""

import math

import pytest
import torch
from scipy.signal import resample_poly

from bench.frontends import ZEROS, resample


def _tone(hz: float, rate: int, samples: int) -> torch.Tensor:
    """float64: float32 phases drift by 1e-4 over a second at kHz frequencies."""
    return torch.sin(2 * math.pi * hz * torch.arange(samples, dtype=torch.float64) / rate)


# resample


@pytest.mark.parametrize(
    ("orig", "new", "samples", "expected"),
    [
        (32000, 16000, 32000, 16000),
        (32000, 8000, 32000, 8000),
        (16000, 32000, 16000, 32000),
        (32000, 16000, 32001, 16001),
    ],
)
def test_resample_length_is_the_ceiling_of_the_scaled_length(orig, new, samples, expected):
    wave = torch.zeros(2, 3, samples)
    assert resample(wave, orig, new).shape == (2, 3, expected)


def test_resample_is_the_identity_at_equal_rates():
    wave = torch.randn(2, 100)
    assert resample(wave, 16000, 16000) is wave


@pytest.mark.parametrize(
    ("orig", "new"), [(32000, 16000), (32000, 8000), (16000, 32000), (8000, 32000), (48000, 32000), (44100, 16000)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resampled_sines_match_the_analytic_sine_away_from_the_edges(orig, new, dtype):
    """1e-4 holds from 1 kHz up to 0.8 of the lower Nyquist rate (measured 7e-5 there, 4e-5 at
    1 kHz) in both dtypes; the ends see the zeros outside the segment."""
    edge = 2 * ZEROS * new // min(orig, new)
    for hz in (1000, 0.4 * min(orig, new)):
        out = resample(_tone(hz, orig, orig).to(dtype), orig, new)
        assert out.dtype == dtype
        error = (out.double() - _tone(hz, new, out.shape[-1]))[edge:-edge].abs().max()
        assert error < 1e-4, (hz, error)


@pytest.mark.parametrize(("orig", "new"), [(32000, 16000), (32000, 8000), (16000, 32000), (44100, 16000)])
def test_resample_agrees_with_scipy_resample_poly(orig, new):
    """Within 2e-3 on a 1 kHz sine away from the edges (measured 1.1e-3): scipy's default filter
    (Kaiser, beta 5) ripples by about 1e-3 in the passband, where this one stays within 1e-4."""
    wave = _tone(1000, orig, orig)
    g = math.gcd(orig, new)
    expected = torch.from_numpy(resample_poly(wave.numpy(), new // g, orig // g))
    out = resample(wave, orig, new)
    edge = 2 * ZEROS * new // min(orig, new)
    assert out.shape == expected.shape
    assert (out - expected)[edge:-edge].abs().max() < 2e-3


@pytest.mark.parametrize("hz", [8100, 9000, 12000, 15900])
def test_resample_rejects_what_the_new_rate_cannot_hold(hz):
    """Tones above the new Nyquist rate would alias into the band: they come out below -80 dB."""
    out = resample(_tone(hz, 32000, 32000), 32000, 16000)
    assert out[100:-100].abs().max() < 1e-4


def test_upsampling_leaves_no_image_above_the_old_nyquist_rate():
    out = resample(_tone(6400, 16000, 16000), 16000, 32000)[200:-200]
    spectrum = torch.fft.rfft(out * torch.hann_window(out.shape[-1], dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(out.shape[-1], 1 / 32000)
    assert spectrum[freqs > 8000].max() < 1e-4 * spectrum.max()


def test_the_callers_autocast_does_not_reach_the_filters():
    """bf16 autocast would run the matmul in bf16."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resample(torch.randn(1, 16000), 16000, 32000).dtype == torch.float32
