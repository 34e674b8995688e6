"""HTS-AT, the hierarchical token-semantic audio transformer (Chen et al., ICASSP 2022).

The audio tower of the paper, as an encoder over log-mel spectrograms: the official model
(RetroCirce/HTS-Audio-Transformer) without its STFT/log-mel front-end and its token-semantic
head, so that methods can adapt it block by block. Its layout is Swin-V1 over a "spectrogram
image": bn0 over the mel bins, SpecAugment in training, the time axis folded into
`freq_ratio` chunks stacked along frequency (a spec_size x spec_size one-channel image), a
4x4 patch embedding, four pre-norm stages that merge patches at their END (Swin-V2 in timm
merges at the start), and a final LayerNorm. Tokens are NHWC [N, H, W, C] between stages.

timm's Swin-V1 `SwinTransformerBlock`, `PatchMerging` and `PatchEmbed` compute what the
official layers compute (same -100 shift mask, window clamped to the grid with no shift when
the grid fits in one window, same concatenation order when merging, same relative-position
table and key names, drop path on both residual branches), so they are used as they are and
the official checkpoint keys map 1:1 onto this module's. Only torch and timm are imported.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from torch import nn


@dataclass(frozen=True)
class HtsatConfig:
    """Shape of an HTS-AT tower; the defaults are the official AudioSet model.

    The log-mel input has `mel_bins` bins and at most spec_size * freq_ratio frames, where
    freq_ratio = spec_size // mel_bins (4 officially: 1024 frames, about 10 s at hop 320 and
    32 kHz). SpecAugment drops `stripes` time stripes narrower than `time_drop_width` and as
    many frequency stripes narrower than `freq_drop_width` (torchlibrosa's, as officially).
    """

    mel_bins: int = 64
    spec_size: int = 256
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    spec_augment: bool = True
    time_drop_width: int = 64
    freq_drop_width: int = 8
    stripes: int = 2

    def __post_init__(self) -> None:
        sizes = (
            "mel_bins",
            "spec_size",
            "patch_size",
            "embed_dim",
            "window_size",
            "time_drop_width",
            "freq_drop_width",
        )
        for name in sizes:
            self._check(name, _is_int(getattr(self, name)) and getattr(self, name) > 0, "must be a positive integer")
        self._check("stripes", _is_int(self.stripes) and self.stripes >= 0, "must be a non-negative integer")
        self._check("mlp_ratio", self.mlp_ratio > 0, "must be positive")
        self._check("drop_path_rate", 0.0 <= self.drop_path_rate < 1.0, "must be in [0, 1)")
        self._check("spec_size", self.spec_size % self.mel_bins == 0, f"must be a multiple of mel_bins={self.mel_bins}")
        self._check(
            "spec_size", self.spec_size % self.patch_size == 0, f"must be a multiple of patch_size={self.patch_size}"
        )
        ok = len(self.depths) > 0 and all(_is_int(d) and d > 0 for d in self.depths)
        self._check("depths", ok, "must be one or more positive integers")
        self._check("num_heads", len(self.num_heads) == len(self.depths), "needs one entry per stage")
        for s, heads in enumerate(self.num_heads):
            ok = _is_int(heads) and heads > 0 and self.width(s) % heads == 0
            self._check("num_heads", ok, f"stage {s}: {heads} heads do not divide the width {self.width(s)}")
        for s in range(len(self.depths)):
            grid = self.grid(s)
            if s < len(self.depths) - 1:
                self._check("spec_size", grid % 2 == 0, f"gives stage {s} an odd {grid}x{grid} grid to merge")
            if grid > self.window_size:
                self._check(
                    "window_size", grid % self.window_size == 0, f"does not tile stage {s}'s {grid}x{grid} grid"
                )

    def _check(self, name: str, ok: bool, why: str) -> None:
        if not ok:
            raise ValueError(f"HtsatConfig.{name}={getattr(self, name)!r} {why}")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def max_frames(self) -> int:
        """Frames the image holds; shorter inputs are stretched to it (bicubic, officially)."""
        return self.spec_size * self.freq_ratio

    @property
    def num_features(self) -> int:
        return self.width(len(self.depths) - 1)

    def width(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def grid(self, stage: int) -> int:
        """Side of the square token grid that stage `stage` runs on."""
        return self.spec_size // self.patch_size // 2**stage

    def window(self, stage: int) -> int:
        """The window a stage attends in: the whole grid when it fits in one window."""
        return min(self.window_size, self.grid(stage))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def drop_stripes(x: torch.Tensor, dim: int, width: int, stripes: int) -> torch.Tensor:
    """torchlibrosa's DropStripes, vectorised: for each sample of x [N, C, T, F], zero
    `stripes` stripes along `dim` (2: time, 3: frequency), each of a width drawn uniformly
    from [0, width) and a start drawn uniformly from [0, size - w) for a stripe of width w (so,
    as there, a stripe never covers the last element). Draws come from torch's global RNG. Widths are capped
    below the axis length, where torchlibrosa would fail instead."""
    n, size = x.shape[0], x.shape[dim]
    widths = torch.randint(0, min(width, size), (n, stripes, 1), device=x.device)
    starts = (torch.rand(n, stripes, 1, device=x.device) * (size - widths)).long()
    pos = torch.arange(size, device=x.device)
    hit = ((pos >= starts) & (pos < starts + widths)).any(dim=1)  # [N, size]
    shape = [n, 1, 1, 1]
    shape[dim] = size
    return x.masked_fill(hit.view(shape), 0.0)


class HtsatStage(nn.Module):
    """One stage: blocks, then patch merging (the official BasicLayer; merging comes last)."""

    def __init__(self, cfg: HtsatConfig, stage: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        dim, grid = cfg.width(stage), cfg.grid(stage)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                input_resolution=(grid, grid),
                num_heads=cfg.num_heads[stage],
                window_size=cfg.window_size,
                shift_size=0 if j % 2 == 0 else cfg.window_size // 2,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                drop_path=drop_path_rates[j],
                norm_layer=nn.LayerNorm,
            )
            for j in range(cfg.depths[stage])
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(dim=dim, out_dim=2 * dim, norm_layer=nn.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class HTSAT(nn.Module):
    """HTS-AT encoder: log-mel [N, 1, T, mel_bins] -> tokens or a pooled embedding.

    Attributes follow the official model (bn0, patch_embed, layers[i].blocks[j],
    layers[i].downsample, norm), so checkpoint keys map 1:1.
    """

    def __init__(self, cfg: HtsatConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HtsatConfig()
        self.num_features = cfg.num_features
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.patch_embed = PatchEmbed(
            img_size=cfg.spec_size,
            patch_size=cfg.patch_size,
            in_chans=1,
            embed_dim=cfg.embed_dim,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
        )
        # stochastic depth grows linearly over all blocks (official rule); CPU so meta builds work
        rates = iter(torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist())
        self.layers = nn.ModuleList(
            HtsatStage(cfg, s, [next(rates) for _ in range(d)]) for s, d in enumerate(cfg.depths)
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel [N, 1, T, F] -> image [N, 1, spec_size, spec_size] (official reshape_wav2img):
        stretch T to max_frames, cut time into freq_ratio chunks, stack them along frequency
        (chunk k fills rows k*F .. (k+1)*F - 1)."""
        cfg = self.cfg
        if x.shape[2] < cfg.max_frames:
            x = F.interpolate(x, size=(cfg.max_frames, cfg.mel_bins), mode="bicubic", align_corners=True)
        n = x.shape[0]
        x = x.transpose(2, 3).reshape(n, 1, cfg.mel_bins, cfg.freq_ratio, cfg.spec_size)
        return x.transpose(2, 3).reshape(n, 1, cfg.spec_size, cfg.spec_size)

    def embed(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel [N, 1, T, mel_bins] -> patch tokens [N, H, W, embed_dim] entering stage 0."""
        cfg = self.cfg
        if logmel.ndim != 4 or logmel.shape[1] != 1 or logmel.shape[3] != cfg.mel_bins:
            raise ValueError(f"HTS-AT expects a log-mel [N, 1, T, {cfg.mel_bins}], got {list(logmel.shape)}")
        frames = logmel.shape[2]
        if frames > cfg.max_frames:
            raise ValueError(
                f"log-mel has T={frames} frames, more than spec_size * freq_ratio = "
                f"{cfg.spec_size} * {cfg.freq_ratio} = {cfg.max_frames}"
            )
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        if self.training and cfg.spec_augment:
            x = drop_stripes(x, 2, cfg.time_drop_width, cfg.stripes)
            x = drop_stripes(x, 3, cfg.freq_drop_width, cfg.stripes)
        return self.patch_embed(self.fold(x))

    def forward_features(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> final-normed tokens [N, H', W', num_features]."""
        x = self.embed(logmel)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> [N, num_features]: the mean over tokens (the official latent_output)."""
        return self.forward_features(logmel).mean(dim=(1, 2))


def _init_weights(module: nn.Module) -> None:
    """The official init: Linear weights truncated normal (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def htsat_param_count(cfg: HtsatConfig) -> int:
    """Parameters of HTSAT(cfg), in closed form (bn0 affine, patch embedding, stages, final norm)."""
    e = cfg.embed_dim
    total = 2 * cfg.mel_bins + cfg.patch_size**2 * e + e + 2 * e
    for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
        c, hidden = cfg.width(s), int(cfg.width(s) * cfg.mlp_ratio)
        attn = 4 * c * c + 4 * c + (2 * cfg.window(s) - 1) ** 2 * heads  # qkv, proj, bias table
        mlp = 2 * c * hidden + hidden + c
        total += depth * (attn + mlp + 4 * c)  # + norm1, norm2
        if s < len(cfg.depths) - 1:
            total += 8 * c + 8 * c * c  # LayerNorm(4C), Linear(4C -> 2C) without bias
    return total + 2 * cfg.num_features


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the HTS-AT encoder; the message names the file and key."""


_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")
_HEAD = ("tscam_conv.", "head.")
_DERIVED = (".attn_mask", ".relative_position_index")
_PREFIX = "sed_model."


def split_official_state_dict(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """Official HTS-AT state -> (encoder state for HTSAT.load_state_dict(strict=True),
    front-end state: the spectrogram/log-mel weights, for the caller to verify).

    Accepts a Lightning checkpoint dict (top-level 'state_dict') or a bare state dict, with
    or without the 'sed_model.' prefix the official Lightning wrapper adds. Drops the buffers
    this module recomputes (attn_mask, relative_position_index) and the token-semantic head;
    a key that is none of these nor an encoder key raises CheckpointMismatch naming it."""
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    encoder: dict[str, torch.Tensor] = {}
    front: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix(_PREFIX)
        if name.startswith(_FRONT_END):
            front[name] = value
        elif name.startswith(_HEAD) or (name.startswith("layers.") and name.endswith(_DERIVED)):
            continue
        elif _is_encoder_key(name):
            encoder[name] = value
        else:
            raise CheckpointMismatch(f"{source}: unknown key {key!r} {_shape(value)} (not an HTS-AT key)")
    return encoder, front


_ENCODER_TOP = {f"bn0.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
_ENCODER_TOP |= {f"patch_embed.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
_ENCODER_TOP |= {"norm.weight", "norm.bias"}
_BLOCK_PARAMS = {
    f"{m}.{p}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")
}
_BLOCK_PARAMS.add("attn.relative_position_bias_table")
_MERGE_PARAMS = {"norm.weight", "norm.bias", "reduction.weight"}


def _is_encoder_key(name: str) -> bool:
    """Whether `name` has the form of an encoder key (layer indices are checked on load)."""
    if name in _ENCODER_TOP:
        return True
    parts = name.split(".")
    if len(parts) < 4 or parts[0] != "layers" or not parts[1].isdigit():
        return False
    if parts[2] == "blocks":
        return parts[3].isdigit() and ".".join(parts[4:]) in _BLOCK_PARAMS
    return parts[2] == "downsample" and ".".join(parts[3:]) in _MERGE_PARAMS


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _read_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """A .safetensors file through timm's reader; anything else through torch.load with
    weights_only=True. A file that pickles other objects (a Lightning 1.x checkpoint may)
    would run code when fully unpickled, so it is refused with the one-line way out."""
    if path.suffix == ".safetensors":
        return timm_load_state_dict(str(path), use_ema=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointMismatch(
            f"{path}: pickles objects besides tensors (torch.load refused it with weights_only=True), and fully "
            "unpickling a file can run code. From a trusted copy, keep its state dict once: python -c "
            f"\"import torch; c = torch.load('{path}', weights_only=False); torch.save(c['state_dict'], "
            f"'{path.with_suffix('.pth')}')\" and load that file."
        ) from None


def load_htsat_checkpoint(model: HTSAT, path: Path) -> dict[str, torch.Tensor]:
    """Strictly load an official HTS-AT checkpoint (Lightning .ckpt, .pth state dict or
    .safetensors) into `model`; return its front-end state. A missing, unexpected or
    wrong-shape key raises CheckpointMismatch naming the first one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HTS-AT checkpoint {path} does not exist")
    state = _read_checkpoint(path)
    if not isinstance(state, Mapping):
        raise CheckpointMismatch(f"{path}: holds a {type(state).__name__}, not a state dict")
    encoder, front = split_official_state_dict(state, str(path))
    expected = model.state_dict()
    for key, value in encoder.items():
        if key not in expected:
            raise CheckpointMismatch(f"{path}: unexpected key {key!r} {_shape(value)} for {model.cfg}")
        if value.shape != expected[key].shape:
            raise CheckpointMismatch(
                f"{path}: key {key!r} has shape {_shape(value)}, the model expects {list(expected[key].shape)}"
            )
    for key, value in expected.items():
        if key not in encoder:
            raise CheckpointMismatch(f"{path}: missing key {key!r} {list(value.shape)}")
    model.load_state_dict(encoder, strict=True)
    return front
