"""Audio front-ends (bench/frontends.py) against the libraries the towers were trained with.

HTS-AT's log-mel is compared with torchlibrosa, a dependency of the project. LAVisH's fbank is
compared with torchaudio, which cannot be installed beside the project's torch: its outputs
are stored in tests/fixtures/lavish_fbank.npz, made once in a scratch virtualenv outside the
repository (`pip install torch==2.9.1 'torchaudio==2.9.*' numpy`, which gave torch 2.9.1+cu128,
torchaudio 2.9.1+cu128 and numpy 2.4.6) by these calls, for dtype float32 and float64:

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    w = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    wave = np.round((w + 0.05 * rng.standard_normal(8000) + 0.05) * 32767).astype(np.int16)
    x = torch.from_numpy(wave).to(dtype)[None] / 32768  # torchaudio.load's scaling of 16-bit PCM
    x = x - x.mean()  # LAVisH's loader
    fbank = torchaudio.compliance.kaldi.fbank(x, htk_compat=True, sample_frequency=16000, use_energy=False,
                                              window_type="hanning", num_mel_bins=M, dither=0.0, frame_shift=S)
    fbank = (fbank - mean) / (std * 2)  # then torch.nn.ZeroPad2d((0, 0, 0, T - len(fbank)))(fbank)

saved with np.savez_compressed as `wave` (int16), `sample_rate`, `swin_{f32,f64}` (M=192,
S=5.2, mean=-4.984795570373535, std=3.7079780101776123, T=192) and `vit_{f32,f64}` (M=128,
S=10, mean=-4.1426, std=3.2001, T=102).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from bench.frontends import ZEROS, FbankFrontend, LogMelFrontend, resample

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lavish_fbank.npz"
HTSAT = dict(sample_rate=32000, window=1024, hop=320, mel_bins=64, fmin=50.0, fmax=14000.0)
LAVISH = {
    "swin": dict(mel_bins=192, frame_shift_ms=5.2, frames=192, mean=-4.984795570373535, std=3.7079780101776123),
    "vit": dict(mel_bins=128, frame_shift_ms=10, frames=102, mean=-4.1426, std=3.2001),
}


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


def _fbank(name: str, **kwargs: int) -> FbankFrontend:
    return FbankFrontend(16000, **(LAVISH[name] | kwargs))


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


# LAVisH's Kaldi fbank


@pytest.mark.parametrize("name", list(LAVISH))
def test_fbank_equals_torchaudio(name):
    """Fed the raw waveform, DC offset included, while torchaudio got it after the loader's mean
    subtraction: the offset is constant within each frame, and Kaldi removes each frame's mean.
    float32: within 1e-4 (measured 6.3e-5 swin, 4.9e-5 vit), at worst in the lowest mel bin,
    which pre-emphasis leaves some 30 dB below the rest: there torchaudio's own float32 output is
    7.5e-5 from its float64 one, and ours 2.4e-5. float64: within 2e-5 (measured 1.5e-5), the
    difference of torchaudio's mel filters, which it computes in float32 for any input dtype
    (up to 2.8e-5 from their float64 values), from these, computed in float64."""
    fixture = np.load(FIXTURE)
    wave = torch.from_numpy(fixture["wave"])[None] / 32768
    frontend = _fbank(name)
    for dtype, tag, tolerance in [(torch.float32, "f32", 1e-4), (torch.float64, "f64", 2e-5)]:
        out = frontend(wave.to(dtype))[:, 0]
        expected = torch.from_numpy(fixture[f"{name}_{tag}"])[None]
        assert out.dtype == dtype and out.shape == expected.shape
        assert (out - expected).abs().max() < tolerance, tag


def test_fbank_ignores_a_constant_offset():
    """Why the loader's whole-clip mean subtraction is not repeated."""
    wave = _sines_and_noise(16000)
    frontend = _fbank("swin")
    assert (frontend(wave + 0.3) - frontend(wave)).abs().max() < 1e-9


@pytest.mark.parametrize(("name", "frames", "bins", "rows"), [("swin", 188, 192, 192), ("vit", 98, 128, 102)])
def test_fbank_pads_one_second_with_zero_rows(name, frames, bins, rows):
    """1 s at 16 kHz gives 188 frames at an 83-sample shift (5.2 ms, rounded down as Kaldi does)
    and 98 at 160; the loader pads them, after normalising, with zeros."""
    out = _fbank(name)(_sines_and_noise(16000).float())
    assert out.shape == (1, 1, rows, bins)
    assert out[:, :, frames:].eq(0).all() and out[:, :, frames - 1].ne(0).all()


def test_fbank_cuts_to_frames():
    wave = _sines_and_noise(16000).float()
    assert torch.equal(_fbank("swin", frames=50)(wave), _fbank("swin")(wave)[:, :, :50])


@pytest.mark.parametrize("rate", [8000, 32000])
def test_fbank_resamples_its_input_first(rate):
    wave = _sines_and_noise(rate).float()
    out = _fbank("swin", input_rate=rate)(wave)
    assert out.shape == (1, 1, 192, 192)
    assert torch.equal(out, _fbank("swin")(resample(wave, rate, 16000)))


# both front-ends as modules


FRONTENDS = {
    "logmel": (lambda: LogMelFrontend(**HTSAT, input_rate=16000), ["window", "mel", "resample.kernel"]),
    "fbank": (lambda: _fbank("swin", input_rate=32000), ["window", "mel", "resample.kernel"]),
}


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_constants_are_non_persistent_buffers_that_move_with_the_module(name):
    make, buffers = FRONTENDS[name]
    frontend = make()
    assert [n for n, _ in frontend.named_buffers()] == buffers
    assert frontend.state_dict() == {} and list(frontend.parameters()) == []
    frontend.to("meta")  # no data there: a forward that left the device (numpy, .cpu()) would fail
    assert all(b.device.type == "meta" for b in frontend.buffers())
    assert frontend(torch.zeros(2, 32000, device="meta")).device.type == "meta"


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_a_batch_equals_its_samples_one_by_one(name):
    """Bit-equal here; the tolerance leaves a BLAS free to block a batch differently."""
    frontend = FRONTENDS[name][0]()
    waves = torch.cat([_sines_and_noise(16000, noise=n) for n in (0.01, 0.1, 0.3)]).float()
    batched = frontend(waves)
    singles = torch.cat([frontend(w[None]) for w in waves])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_the_callers_grad_mode_is_kept(name):
    """Frozen, but not forced into no_grad: a caller may differentiate through the features."""
    frontend = FRONTENDS[name][0]()
    wave = torch.randn(1, 16000, requires_grad=True)
    frontend(wave).sum().backward()
    assert wave.grad is not None and wave.grad.isfinite().all()


@pytest.mark.parametrize("name", list(FRONTENDS))
def test_the_callers_autocast_does_not_reach_the_dsp(name):
    """bf16 autocast would run the resampling and mel matmuls in bf16."""
    frontend = FRONTENDS[name][0]()
    wave = _sines_and_noise(16000).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(wave)
    assert torch.equal(out, frontend(wave))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resample(wave, 16000, 32000).dtype == torch.float32
