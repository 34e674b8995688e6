"""Presets: the paper's tower families at every scale, their front-ends and their weights."""

import pytest
import torch

from bench.data.synthetic import render_sources
from bench.frontends import FbankFrontend
from bench.presets import PRESETS, TINY_FBANK, get_preset
from mettle_core.htsat import HtsatConfig
from mettle_core.interface import UnknownNameError


def test_every_scale_uses_the_papers_families():
    for name in ("smoke", "tiny", "paper"):
        p = get_preset(name)
        assert p.audio.arch == "htsat" and p.audio.audio.kind == "logmel"
        assert p.visual.arch.startswith("swinv2") and p.visual.audio is None
        assert p.shared.arch == p.visual.arch and p.shared.audio.kind == "fbank"  # LAVisH shares the Swin-V2
    assert get_preset("base").visual.arch == get_preset("smoke_vit").visual.arch.replace("tiny", "base")


def test_paper_preset_is_the_papers_setting():
    paper = get_preset("paper")
    assert paper.visual.arch == "swinv2_large_window12_192" and paper.visual.kwargs["img_size"] == 192
    assert paper.weights["visual"] == "timm:swinv2_large_window12_192.ms_in22k"  # ImageNet-22k, as the paper
    assert HtsatConfig(**paper.audio.kwargs) == HtsatConfig()  # the official AudioSet model
    logmel = paper.audio.audio.params  # HTS-AT's front-end
    assert (logmel["sample_rate"], logmel["window"], logmel["hop"], logmel["mel_bins"]) == (32000, 1024, 320, 64)
    assert (logmel["fmin"], logmel["fmax"]) == (50.0, 14000.0)
    fbank = paper.shared.audio.params  # LAVisH's Swin-V2 loader: 192 x 192 at 16 kHz, its normalisation
    assert (fbank["sample_rate"], fbank["mel_bins"], fbank["frame_shift_ms"], fbank["frames"]) == (16000, 192, 5.2, 192)
    assert (fbank["mean"], fbank["std"]) == (-4.984795570373535, 3.7079780101776123)
    assert paper.shape.sample_rate == 32000 and "audio" not in paper.weights  # HTS-AT's file is the user's to give


def test_tiny_fbank_is_normalised_by_the_statistics_of_its_pretraining_sounds():
    """LAVisH normalises its fbank by AVE's statistics; the tiny preset by those of the synthetic
    sound corpus its towers are pretrained on (the preset quotes 4000 clips; 500 agree)."""
    params = dict(TINY_FBANK.params, mean=0.0, std=0.5)  # raw log-mel energies
    x, _, _ = render_sources(torch.Generator().manual_seed(0), 500, params["sample_rate"])
    with torch.no_grad():
        raw = FbankFrontend(**params)(x)
    assert raw.mean().item() == pytest.approx(TINY_FBANK.params["mean"], abs=0.05)
    assert raw.std().item() == pytest.approx(TINY_FBANK.params["std"], abs=0.05)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown preset 'tinny'; did you mean 'tiny'"):
        get_preset("tinny")
    assert {"smoke", "smoke_vit", "tiny", "base", "paper"} == set(PRESETS.names())
