"""Where every method and task lives: a name -> "module:attr" map each, loaded lazily.

A new method touches its module (which holds its `MethodEntry` as `METHOD`), this map and its
test; a new task likewise. Nothing is imported until a name is used, so a run loads only its
own plug-ins (peft only for LoRA).
"""

from __future__ import annotations

from bench.tasks.base import Task
from mettle_core.interface import MethodEntry, Registry, UnknownNameError

METHOD_PLACES = {
    "avmoe": "baselines.avmoe:METHOD",
    "dgsct": "baselines.dgsct:METHOD",
    "frozen": "baselines.frozen:METHOD",
    "full": "baselines.full:METHOD",
    "lavish": "baselines.lavish:METHOD",
    "lora": "baselines.lora:METHOD",
    "lst": "baselines.lst:METHOD",
    "mettle": "mettle_core.method:METHOD",
}
TASK_PLACES = {
    "ave": "bench.tasks.ave:TASK",
    "avs_ms3": "bench.tasks.avs:MS3_TASK",
    "avs_s4": "bench.tasks.avs:S4_TASK",
    "avvp": "bench.tasks.avvp:TASK",
}
METHODS: Registry[MethodEntry] = Registry("method", METHOD_PLACES, MethodEntry)
TASKS: Registry[Task] = Registry("task", TASK_PLACES, Task)


def get_method(name: str) -> MethodEntry:
    return METHODS.get(name)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


__all__ = ["METHODS", "TASKS", "UnknownNameError", "get_method", "get_task", "task_names"]
