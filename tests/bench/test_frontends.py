"""Audio front-ends (bench/frontends.py) against the libraries the towers were trained with."""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from scipy.signal import resample_poly
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from bench.frontends import ZEROS, LogMelFrontend, resample

HTSAT = dict(sample_rate=32000, window=1024, hop=320, mel_bins=64, fmin=50.0, fmax=14000.0)


def _tone(hz: float, rate: int, samples: int) -> torch.Tensor:
    """float64: float32 phases drift by 1e-4 over a second at kHz frequencies."""
    return torch.sin(2 * math.pi * hz * torch.arange(samples, dtype=torch.float64) / rate)


def _sines_and_noise(rate: int, seconds: float = 1.0, noise: float = 0.01) -> torch.Tensor:
    """[1, S] float64: three tones and seeded white noise, so that every mel bin has energy."""
    samples = round(rate * seconds)
    wave = 0.3 * _tone(440, rate, samples) + 0.2 * _tone(1000, rate, samples) + 0.1 * _tone(3000, rate, samples)
    noise_ = torch.randn(samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (wave + noise * noise_)[None]


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _torchlibrosa(wave: torch.Tensor) -> torch.Tensor:
    """HTS-AT's own extractor (model/htsat.py), built in the default dtype."""
    spec = Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True, pad_mode="reflect")
    mel = LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10, top_db=None)
    return mel(spec(wave))


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


# HTS-AT's log-mel


def test_logmel_equals_torchlibrosa_in_float64():
    """Both built and run in float64 (torchlibrosa then builds an exact float64 DFT; its mel
    matrix holds librosa's float32 values in both): measured 7e-11 dB."""
    with _default_dtype(torch.float64):
        wave = _sines_and_noise(32000)
        ours, expected = LogMelFrontend(**HTSAT)(wave), _torchlibrosa(wave)
    assert ours.dtype == torch.float64
    assert (ours - expected).abs().max() < 1e-8


def test_logmel_in_float32_is_as_close_to_torchlibrosa_as_float32_allows():
    """torchlibrosa's float32 DFT is a convolution whose rounding error scales with the whole
    frame's energy, so bins far below the tones drift: its float32 output is 5.7e-4 dB from its
    own float64 one on this waveform (noise 40 dB below the tones), and worse on quieter ones.
    torch.stft's FFT rounds less: ours in float32 is within 1e-4 dB of torchlibrosa's float64
    result (measured 5.8e-5) and within 1e-3 dB of its float32 result (measured 5.9e-4)."""
    wave = _sines_and_noise(32000)
    ours = LogMelFrontend(**HTSAT)(wave.float())
    assert ours.dtype == torch.float32
    with _default_dtype(torch.float64):
        exact = _torchlibrosa(wave)
    assert (ours.double() - exact).abs().max() < 1e-4
    assert (ours - _torchlibrosa(wave.float())).abs().max() < 1e-3


def test_logmel_shape_for_one_second():
    assert LogMelFrontend(**HTSAT)(torch.randn(3, 32000)).shape == (3, 1, 101, 64)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_logmel_resamples_its_input_first(rate):
    wave = _sines_and_noise(rate).float()
    out = LogMelFrontend(**HTSAT, input_rate=rate)(wave)
    assert out.shape == (1, 1, 101, 64)
    assert torch.equal(out, LogMelFrontend(**HTSAT)(resample(wave, rate, 32000)))
