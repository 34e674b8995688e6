"""Device resolution (bench/train.py)."""

import pytest
import torch

from bench.cli import main
from bench.config import ConfigError
from bench.train import resolve_device


def test_cuda_resolves_to_the_current_device_with_its_index(monkeypatch):
    """torch.cuda.set_per_process_memory_fraction refuses a bare "cuda" device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")


def test_run_on_cuda_without_cuda_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--methods", "frozen", "--tasks", "ave", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()
