"""Audio front-ends: a mono waveform per segment in, the input features a tower's pretraining
used out. Each tower must see the features its weights were trained on, so each front-end
follows its reference implementation (torchlibrosa for HTS-AT, torchaudio's Kaldi fbank for
LAVisH) and is tested against it. Everything runs batched in torch on the waveform's device:
these modules run on every forward pass.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torchlibrosa.stft import LogmelFilterBank

# Resampling filter: a Kaiser-windowed sinc reaching ZEROS zero crossings of the lower rate on
# each side of a tap, cut off at ROLLOFF of the lower Nyquist rate; KAISER_BETA is Kaiser's
# choice for 80 dB of stopband. Its response (tests/bench/test_frontends.py): within 1e-4 of
# flat up to 0.8 of the lower Nyquist rate, below -80 dB from the Nyquist rate up.
ZEROS = 32
ROLLOFF = 0.92
KAISER_BETA = 7.86

AMIN = 1e-10  # HTS-AT's power_to_db floor
PREEMPHASIS = 0.97  # Kaldi's default, which LAVisH keeps
KALDI_LOW_HZ = 20.0  # Kaldi's default lowest mel edge, which LAVisH keeps


def resample(wave: torch.Tensor, orig_hz: int, new_hz: int) -> torch.Tensor:
    """[..., S] at orig_hz -> [..., ceil(S * new / orig)] at new_hz: band-limited (windowed-sinc)
    rational resampling in torch, on wave's device and dtype; identity when the rates are equal.
    The signal is taken as zero outside the segment, so about ZEROS samples (at the lower rate)
    at each end feel the edge."""
    if orig_hz == new_hz:
        return wave
    up, down = _rates(orig_hz, new_hz)
    kernel, left = _sinc_kernel(up, down)
    with _no_autocast(wave):
        return _polyphase(wave, kernel.to(wave), up, down, left)


def _no_autocast(wave: torch.Tensor) -> AbstractContextManager:
    """The caller's autocast (bf16 training) would run the filters' matmuls in bf16, whose 8-bit
    mantissa is noise at -48 dB: the DSP keeps the waveform's dtype."""
    device = wave.device.type
    return torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()


class _Resample(nn.Module):
    """`resample` with its kernel built once, as a non-persistent buffer."""

    def __init__(self, orig_hz: int, new_hz: int) -> None:
        super().__init__()
        self.up, self.down = _rates(orig_hz, new_hz)
        kernel, self.left = _sinc_kernel(self.up, self.down)
        self.register_buffer("kernel", kernel.to(torch.get_default_dtype()), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return _polyphase(wave, self.kernel.to(wave.dtype), self.up, self.down, self.left)


def resampler(orig_hz: int | None, new_hz: int) -> nn.Module:
    """`resample` from orig_hz to new_hz as a module that builds its filters once (identity
    when the rates are equal or the input rate is unknown)."""
    return nn.Identity() if orig_hz is None or orig_hz == new_hz else _Resample(orig_hz, new_hz)


def _rates(orig_hz: int, new_hz: int) -> tuple[int, int]:
    """(up, down): the rate change as a reduced fraction."""
    g = math.gcd(orig_hz, new_hz)
    return new_hz // g, orig_hz // g


def _sinc_kernel(up: int, down: int) -> tuple[torch.Tensor, int]:
    """([up, taps] float64 polyphase filters, left): row p weighs input samples k*down + m,
    m = -left .. taps - left - 1, into output sample k*up + p."""
    half = ZEROS * max(1.0, down / up)  # half the support, in input samples
    left = math.floor(half)
    taps = math.floor((up - 1) * down / up + half) + left + 1
    cutoff = ROLLOFF * min(1.0, up / down) / 2  # cycles per input sample
    offsets = torch.arange(-left, taps - left, dtype=torch.float64)
    t = torch.arange(up, dtype=torch.float64)[:, None] * down / up - offsets  # output minus input time
    inside = (1 - (t / half) ** 2).clamp(min=0)
    window = torch.special.i0(KAISER_BETA * inside.sqrt()) / torch.special.i0(torch.tensor(KAISER_BETA))
    return 2 * cutoff * torch.sinc(2 * cutoff * t) * window * (inside > 0), left


def _polyphase(wave: torch.Tensor, kernel: torch.Tensor, up: int, down: int, left: int) -> torch.Tensor:
    """Applies `_sinc_kernel`'s filters to strided windows of the padded input (a view, not a
    copy): row k, column p of the product is output sample k*up + p."""
    samples = wave.shape[-1]
    out_len = math.ceil(samples * up / down)
    steps = math.ceil(out_len / up)
    taps = kernel.shape[-1]
    right = max(0, (steps - 1) * down + taps - samples - left)
    windows = F.pad(wave, (left, right)).unfold(-1, taps, down)[..., :steps, :]  # [..., steps, taps]
    return (windows @ kernel.T).flatten(-2)[..., :out_len]


class LogMelFrontend(nn.Module):
    """HTS-AT's front-end: waveform [N, S] -> log-mel [N, 1, frames, mel_bins] in dB (power
    spectrogram of a centred, reflect-padded STFT with a periodic Hann window, mel filters and
    power_to_db as torchlibrosa's Spectrogram + LogmelFilterBank with ref=1.0, amin=1e-10,
    top_db=None). The mel matrix is torchlibrosa's own (librosa's filters); its DFT, a
    convolution there, is torch.stft here: the same numbers (1e-10 dB apart in float64; in
    float32 closer to the exact ones than torchlibrosa's), several times faster on a CPU.

    input_rate: rate of the waveform it receives; resampled to sample_rate first when it differs.
    """

    def __init__(
        self,
        sample_rate: int,
        window: int,
        hop: int,
        mel_bins: int,
        fmin: float,
        fmax: float,
        input_rate: int | None = None,
    ) -> None:
        super().__init__()
        self.hop = hop
        self.resample = resampler(input_rate, sample_rate)
        hann = torch.hann_window(window, periodic=True, dtype=torch.float64).to(torch.get_default_dtype())
        self.register_buffer("window", hann, persistent=False)
        mel = LogmelFilterBank(sr=sample_rate, n_fft=window, n_mels=mel_bins, fmin=fmin, fmax=fmax).melW.detach()
        self.register_buffer("mel", mel, persistent=False)  # [window // 2 + 1, mel_bins]

    def check_checkpoint(self, state: dict[str, torch.Tensor], source: str) -> None:
        """A checkpoint's own front-end weights (HTS-AT's official files store its STFT and mel
        matrices) must be this front-end's, else its tower learnt from other input features:
        ValueError naming the key."""
        mel = state.get("logmel_extractor.melW")
        if mel is not None and (mel.shape != self.mel.shape or not torch.allclose(mel.float(), self.mel, atol=1e-6)):
            raise ValueError(
                f"{source}: logmel_extractor.melW {list(mel.shape)} is not this tower's mel filterbank "
                f"{list(self.mel.shape)}: the checkpoint was trained on other input features"
            )
        dft = state.get("spectrogram_extractor.stft.conv_real.weight")
        if dft is not None and dft.shape[-1] != self.window.numel():
            raise ValueError(
                f"{source}: spectrogram_extractor.stft.conv_real.weight has an STFT window of {dft.shape[-1]} "
                f"samples, this tower's front-end uses {self.window.numel()}"
            )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with _no_autocast(wave):
            wave = self.resample(wave)
            window = self.window.to(wave.dtype)
            spec = torch.stft(
                wave, window.numel(), self.hop, window=window, center=True, pad_mode="reflect", return_complex=True
            )
            power = spec.real.square() + spec.imag.square()  # [N, freqs, frames]
            mel = self.mel.T.to(wave.dtype) @ power  # frames stay innermost: no transposed copy of the spectrum
            return 10 * torch.log10(mel.clamp(min=AMIN)).transpose(1, 2)[:, None]  # ref=1.0: no offset


class FbankFrontend(nn.Module):
    """Kaldi fbank as LAVisH's official AVE data loader computes it with
    torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=sr,
    use_energy=False, window_type='hanning', num_mel_bins=M, dither=0.0, frame_shift=S_ms),
    then (fbank - mean) / (2 * std), then zero-padded or cut to `frames` rows:
    waveform [N, S] -> [N, 1, frames, mel_bins].

    torchaudio cannot be installed beside the project's torch, so the Kaldi algorithm is
    written out here: frames of frame_length_ms every frame_shift_ms that fit in the segment
    (snip_edges), each with its mean removed, pre-emphasised (0.97), under a symmetric Hann
    window, zero-padded to a power of two; power spectrum; triangular HTK mel filters from
    20 Hz to the Nyquist rate; log floored at float32's epsilon. The loader also subtracts the
    clip's mean from the waveform first; that is a constant per frame, which each frame's own
    mean removal takes out anyway, so it is not repeated here.

    input_rate: rate of the waveform it receives; resampled to sample_rate first when it differs.
    """

    def __init__(
        self,
        sample_rate: int,
        mel_bins: int,
        frame_shift_ms: float,
        frames: int,
        mean: float,
        std: float,
        frame_length_ms: float = 25.0,
        input_rate: int | None = None,
    ) -> None:
        super().__init__()
        # Kaldi's (and torchaudio's) own rounding of durations to samples
        self.shift = int(sample_rate * frame_shift_ms * 0.001)
        length = int(sample_rate * frame_length_ms * 0.001)
        self.fft = 1 << (length - 1).bit_length()
        self.frames, self.mean, self.std = frames, mean, std
        self.resample = resampler(input_rate, sample_rate)
        hann = torch.hann_window(length, periodic=False, dtype=torch.float64)
        self.register_buffer("window", hann.to(torch.get_default_dtype()), persistent=False)
        mel = _kaldi_mel_banks(mel_bins, self.fft, sample_rate)
        self.register_buffer("mel", mel.to(torch.get_default_dtype()), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with _no_autocast(wave):
            wave = self.resample(wave)
            x = wave.unfold(-1, self.window.numel(), self.shift)  # [N, frames, length]
            x = x - x.mean(-1, keepdim=True)
            x = x - PREEMPHASIS * torch.cat([x[..., :1], x[..., :-1]], -1)
            spec = torch.fft.rfft(x * self.window.to(x.dtype), n=self.fft)
            mel = spec.abs().square() @ self.mel.to(x.dtype)
            fbank = mel.clamp(min=torch.finfo(torch.float32).eps).log()
            fbank = (fbank - self.mean) / (2 * self.std)
            fbank = F.pad(fbank, (0, 0, 0, max(0, self.frames - fbank.shape[1])))[:, : self.frames]
            return fbank[:, None]


def _kaldi_mel_banks(bins: int, fft: int, sample_rate: int) -> torch.Tensor:
    """[fft // 2 + 1, bins] float64 triangles, evenly spaced on the HTK mel scale from
    KALDI_LOW_HZ to the Nyquist rate, as Kaldi's MelBanks builds them; the Nyquist bin gets no
    weight there."""
    low, high = _htk_mel(torch.tensor([KALDI_LOW_HZ, sample_rate / 2], dtype=torch.float64))
    edges = low + (high - low) / (bins + 1) * torch.arange(bins + 2, dtype=torch.float64)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    mel = _htk_mel(sample_rate / fft * torch.arange(fft // 2, dtype=torch.float64))[:, None]
    rising, falling = (mel - left) / (centre - left), (right - mel) / (right - centre)
    return F.pad(torch.minimum(rising, falling).clamp(min=0), (0, 0, 0, 1))


def _htk_mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)
