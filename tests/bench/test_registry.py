"""The method and task registries: lazy "module:attr" places, did-you-mean errors, and a run
that imports only the plug-ins it uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.registry import METHOD_PLACES, METHODS, TASK_PLACES, TASKS, get_method, get_task, task_names
from bench.tasks.base import Task
from mettle_core.interface import MethodEntry, Registry, UnknownNameError

REPO = Path(__file__).resolve().parents[2]


def test_every_place_loads_an_entry_of_its_own_name() -> None:
    assert METHODS.names() == sorted(METHOD_PLACES) and task_names() == sorted(TASK_PLACES)
    for name in METHODS.names():
        entry = get_method(name)
        assert isinstance(entry, MethodEntry) and entry.name == name and entry.towers
    for name in task_names():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
    assert get_method("frozen") is get_method("frozen")  # loaded once


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="unknown method 'lavsh'; did you mean 'lavish'"):
        get_method("lavsh")
    with pytest.raises(UnknownNameError, match=r"unknown task 'avss4'; did you mean 'avs_s4'\?.*valid: ave, "):
        get_task("avss4")
    assert "lora" in METHODS and "nope" not in TASKS


def test_a_place_must_hold_an_entry_of_the_right_type_and_name() -> None:
    wrong_type = Registry("method", {"frozen": "baselines.frozen:FrozenConfig"}, MethodEntry)
    with pytest.raises(TypeError, match="baselines.frozen:FrozenConfig is not a MethodEntry"):
        wrong_type.get("frozen")
    wrong_name = Registry("method", {"cold": "baselines.frozen:METHOD"}, MethodEntry)
    with pytest.raises(ValueError, match="is named 'frozen'"):
        wrong_name.get("cold")
    with pytest.raises(ValueError, match="registered twice"):
        Registry("method", {"frozen": "baselines.frozen:METHOD"}).add("frozen", object())


def test_a_method_config_must_be_a_dataclass() -> None:
    with pytest.raises(TypeError, match="config of method 'x' must be a dataclass"):
        MethodEntry("x", dict, lambda towers, spec, cfg: None, "", towers=("audio",))  # type: ignore[arg-type,return-value]


def test_a_run_imports_only_its_own_plug_ins() -> None:
    """Listing names and resolving a frozen AVE run import no other method or task, nor peft;
    an override of a method's config loads that method."""
    code = (
        "import sys\n"
        "from bench.plan import RunPlan, resolve\n"
        "from bench.registry import METHODS, task_names\n"
        "METHODS.names(); task_names()\n"
        "resolve(RunPlan(methods=['frozen'], tasks=['ave'], preset='smoke'))\n"
        "ours = ('baselines', 'peft', 'bench.tasks')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(ours))\n"
        "print(' '.join(loaded))\n"
        "resolve(RunPlan(methods=['frozen'], tasks=['ave'], preset='smoke', overrides=['lora.r=4']))\n"
        "print('peft' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    first, second = out.splitlines()
    assert first.split() == [
        "baselines",
        "baselines.frozen",
        "baselines.pooled",
        "bench.tasks",
        "bench.tasks.ave",
        "bench.tasks.base",
        "bench.tasks.heads",  # AVE's published head, which its loss and predictions recognise
        "bench.tasks.heads.cmbs",
    ]
    assert second == "True"
