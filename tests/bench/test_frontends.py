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
import torch.nn.functional as F
from scipy.signal import resample_poly
from tolerances import U32, U64, gamma
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from bench.frontends import AMIN, PREEMPHASIS, ZEROS, FbankFrontend, LogMelFrontend, resample, resampler

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


# Rounding-error bounds, computed from the data (tests/tolerances.py says why): each helper
# follows a front-end's steps in float64 and bounds, element by element, how far the same steps
# run at unit round-off u can land from them, on any CPU.


def _resample_error(orig: int, new: int, peak: float, u: float) -> float:
    """Bound on any output sample's rounding error when resampling a waveform of peak |x| =
    `peak`: a dot product of a kernel row (its non-zero taps, rounded from float64) with the
    input (gamma_{taps + 2} sum|k x|)."""
    kernel = resampler(orig, new).kernel.double()
    taps = int((kernel != 0).sum(-1).max())
    return gamma(taps + 2, u) * kernel.abs().sum(-1).max().item() * peak


def _fft_error(frames: torch.Tensor, n: int, u: float) -> torch.Tensor:
    """Bound [..., 1] on any bin's rounding error in an n-point FFT of `frames` [..., L]: Higham
    (Accuracy and Stability of Numerical Algorithms, Theorem 24.2) bounds the error's 2-norm by
    m eta / (1 - m eta) ||X||_2 for m radix-2 stages, eta = u + gamma_4 (sqrt 2 + u); one stage
    more covers the real-input split and radix-4 variants; ||X||_2 = sqrt(n) ||x||_2 (Parseval)."""
    stages = math.log2(n) + 1
    eta = u + gamma(4, u) * (math.sqrt(2) + u)
    return stages * eta / (1 - stages * eta) * math.sqrt(n) * frames.norm(dim=-1, keepdim=True)


def _log_mel_error(
    spectrum: torch.Tensor, dft_error: torch.Tensor, mel: torch.Tensor, floor: float, u: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bound on |log E - log E_exact|, E_exact) for mel energies E = max(|X|^2 @ mel, floor):
    `spectrum` |X| [..., K] exact, `dft_error` [..., 1] a bound on each bin's error, `mel`
    [K, M] non-negative. A power rounds 3 times; a sum of K non-negative terms is within
    gamma_K; log max(., floor) moves by at most -log(1 - rho) for an error rho < 1 relative to
    max(E, floor), and is unbounded (inf) beyond."""
    x, e, k = spectrum, dft_error, mel.shape[0]
    power_error = 2 * x * e + e**2 + gamma(3, u) * (x + e) ** 2
    energy = x.square() @ mel
    rho = ((1 + gamma(k, u)) * (power_error @ mel) + gamma(k, u) * energy) / energy.clamp(min=floor)
    return torch.where(rho < 1, -torch.log1p(-torch.where(rho < 1, rho, 0)), torch.inf), energy


def _fbank_error(
    frontend: FbankFrontend, wave: torch.Tensor, u: float, sample_error: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fbank of float64 `wave` [N, S], bound on the rounding error of `frontend` run at unit
    round-off u on it), both [N, 1, frames, bins]. `sample_error` bounds the error of each input
    sample (a resampler's), on top of its rounding to u. The frame mean's error is common to a
    frame's samples, so pre-emphasis keeps 0.03 of it; the window (rounded from float64) and
    each product round once more."""
    length = frontend.window.numel()
    a = wave.unfold(-1, length, frontend.shift)  # [N, frames, length]
    a_error = u * a.abs() + sample_error
    b = a - a.mean(-1, keepdim=True)
    mean_error = gamma(length, u) * a.abs().mean(-1, keepdim=True) + a_error.mean(-1, keepdim=True)
    own = a_error + u * b.abs()

    def previous(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[..., :1], t[..., :-1]], -1)

    c = b - PREEMPHASIS * previous(b)
    c_error = own + PREEMPHASIS * previous(own) + 0.031 * mean_error + gamma(2, u) * previous(b).abs() + u * c.abs()
    window = frontend.window.double()
    d = c * window
    dft_error = (window * c_error + gamma(2, u) * d.abs()).sum(-1, keepdim=True) + _fft_error(d, frontend.fft, u)
    spectrum = torch.fft.rfft(d, n=frontend.fft).abs()
    eps = torch.finfo(torch.float32).eps
    log_error, energy = _log_mel_error(spectrum, dft_error, frontend.mel.double(), eps, u)
    log = energy.clamp(min=eps).log()
    out = (log - frontend.mean) / (2 * frontend.std)
    # the log is within 2 ulp, the normalisation rounds 3 times
    error = (log_error + 2 * u * log.abs()) / (2 * frontend.std) + 3 * u * out.abs()

    def rows(t: torch.Tensor) -> torch.Tensor:  # padded rows are exact zeros
        return F.pad(t, (0, 0, 0, max(0, frontend.frames - t.shape[1])))[:, None, : frontend.frames]

    return rows(out), rows(error)


def _logmel_error(
    frontend: LogMelFrontend, wave: torch.Tensor, u: float, sample_error: float = 0.0, dft: str = "fft"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel of float64 `wave` [N, S], bound on the rounding error of `frontend` run at unit
    round-off u on it), both [N, 1, frames, bins]. dft="conv": the DFT as torchlibrosa computes
    it, a convolution with the window folded into float32 weights (gamma_{n + 2} sum|x w| per
    real and imaginary part), instead of an FFT."""
    n = frontend.window.numel()
    a = F.pad(wave[:, None], (n // 2, n // 2), mode="reflect")[:, 0].unfold(-1, n, frontend.hop)
    window = frontend.window.double()
    d = a * window
    input_error = window * (u * a.abs() + sample_error)
    if dft == "fft":
        dft_error = (input_error + gamma(2, u) * d.abs()).sum(-1, keepdim=True) + _fft_error(d, n, u)
    else:
        dft_error = math.sqrt(2) * (input_error + gamma(n + 2, u) * d.abs()).sum(-1, keepdim=True)
    spectrum = torch.fft.rfft(d).abs()
    log_error, energy = _log_mel_error(spectrum, dft_error, frontend.mel.double(), AMIN, u)
    out = 10 * torch.log10(energy.clamp(min=AMIN))
    error = 10 / math.log(10) * log_error + 3 * u * out.abs()  # log10 within 2 ulp, times 10
    return out[:, None], error[:, None]


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
def test_resampled_sines_match_the_analytic_sine_away_from_the_edges(orig, new):
    """In float64, within 1e-4 from 1 kHz up to 0.8 of the lower Nyquist rate (the filter's
    passband ripple: 7.3e-5 at most, a property of its float64 taps that float64 rounding,
    1e-13 here, cannot move); a wrong phase or rate gives 1e-2 and more. In float32, within a
    dot product's bound of the float64 output (2e-5 at worst, measured 7e-7). The ends see the
    zeros outside the segment."""
    edge = 2 * ZEROS * new // min(orig, new)
    for hz in (1000, 0.4 * min(orig, new)):
        wave = _tone(hz, orig, orig)
        out = resample(wave, orig, new)
        error = (out - _tone(hz, new, out.shape[-1]))[edge:-edge].abs().max()
        assert error < 1e-4, (hz, error)
        single = resample(wave.float(), orig, new)
        assert single.dtype == torch.float32
        assert (single.double() - out).abs().max() <= _resample_error(orig, new, 1.0, U32), hz


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
    """Both built and run in float64 (the mel matrix holds librosa's float32 values in both):
    measured 7e-11 dB, the same on any machine. That gap is torchlibrosa's DFT matrix, which
    numpy builds as powers omega^(jk) with exponents up to 5e5, each some 1e-10 off; float64
    rounding is 1e-13 here. A wrong window, hop or filter gives 1e-3 dB and more."""
    with _default_dtype(torch.float64):
        wave = _sines_and_noise(32000)
        ours, expected = LogMelFrontend(**HTSAT)(wave), _torchlibrosa(wave)
    assert ours.dtype == torch.float64
    assert (ours - expected).abs().max() < 1e-8


def test_logmel_in_float32_is_as_close_to_torchlibrosa_as_float32_allows():
    """Ours in float32 is within the bound of a float32 FFT pipeline of torchlibrosa's float64
    result, element by element (median 0.03 dB, largest 0.12 dB in the bins 60 dB below the
    tones; measured 7e-5 dB at most): mel filters or a window rounded to float16 on the way
    leave it by up to 2e-3 and 0.1 dB. torchlibrosa's own float32 DFT, a 1024-term
    convolution, has a 14 times looser bound, so the float64 test above is the one that ties
    the two algorithms together."""
    wave = _sines_and_noise(32000)
    with _default_dtype(torch.float64):  # float64 constants, rounded to float32 when it runs on float32
        frontend = LogMelFrontend(**HTSAT)
        exact = _torchlibrosa(wave)
    ours = frontend(wave.float())
    assert ours.dtype == torch.float32
    replica, bound = _logmel_error(frontend, wave, U32)
    assert (replica - exact).abs().max() < 1e-8  # the bound is about this very spectrum
    assert ((ours.double() - exact).abs() <= bound + 1e-8).all()
    assert bound.median() < 0.05


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
    float64: within 2e-5 (measured 1.5e-5, the same on any machine: float64 rounding is 1e-13
    here), the difference of torchaudio's mel filters, which it computes in float32 for any
    input dtype (up to 2.8e-5 from their float64 values), from these, computed in float64; a
    wrong filter, pre-emphasis or normalisation gives 1e-2 and more.
    float32: the rounding depends on the CPU (1.2e-4 from torchaudio's float32 output on an
    AVX-512 Xeon), so ours is held to the bound of a float32 pipeline around our float64
    output, element by element (median 1e-4, largest 0.07 in the quietest bins; measured 5e-5
    at most; mel filters rounded to float16 leave it in 900 elements); torchaudio's float32
    output, made on another machine, keeps within the same bound around its float64 one."""
    fixture = np.load(FIXTURE)
    wave = torch.from_numpy(fixture["wave"])[None] / 32768  # 16-bit PCM: exact in float32
    frontend = _fbank(name)
    exact = frontend(wave.double())
    expected = {tag: torch.from_numpy(fixture[f"{name}_{tag}"])[None, None] for tag in ("f32", "f64")}
    assert exact.dtype == torch.float64 and exact.shape == expected["f64"].shape
    assert (exact - expected["f64"]).abs().max() < 2e-5
    single = frontend(wave.float())
    replica, bound = _fbank_error(frontend, wave.double(), U32)
    assert (replica - exact).abs().max() < 1e-9  # the bound is about this very spectrum
    assert single.dtype == torch.float32 and bool(bound.isfinite().all())
    assert ((single.double() - exact).abs() <= bound).all()
    assert ((expected["f32"] - expected["f64"]).abs() <= bound).all()
    assert bound[bound > 0].median() < 1e-3


def test_fbank_ignores_a_constant_offset():
    """Why the loader's whole-clip mean subtraction is not repeated: in float64 the outputs
    differ by rounding only (within both bounds: 4e-10 here; measured 4e-13), where keeping the
    offset would move the low bins by 1 and more."""
    wave = _sines_and_noise(16000)
    frontend = _fbank("swin")
    bound = _fbank_error(frontend, wave, U64)[1] + _fbank_error(frontend, wave + 0.3, U64)[1]
    assert ((frontend(wave + 0.3) - frontend(wave)).abs() <= bound).all()


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
    """In float64, within the sum of both evaluations' rounding bounds (a BLAS may block a
    batch differently: 3e-14 dB apart here, the bound 4e-6 at most); a front-end that mixed
    samples (a batch statistic, a wrong reshape) would move them by far more."""
    frontend = FRONTENDS[name][0]()
    waves = torch.cat([_sines_and_noise(16000, noise=n) for n in (0.01, 0.1, 0.3)])
    batched = frontend(waves)
    singles = torch.cat([frontend(w[None]) for w in waves])
    orig, new = (16000, 32000) if name == "logmel" else (32000, 16000)
    resampling = _resample_error(orig, new, waves.abs().max().item(), U64)
    bound_of = _logmel_error if name == "logmel" else _fbank_error
    replica, bound = bound_of(frontend, frontend.resample(waves), U64, resampling)
    assert (replica - batched).abs().max() < 1e-9
    assert ((batched - singles).abs() <= 2 * bound).all()


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
