"""Registries of methods and tasks; importing this module registers every plug-in."""

from __future__ import annotations

from typing import TYPE_CHECKING

import baselines  # noqa: F401  (registers frozen, full, lora, lavish)
import mettle_core  # noqa: F401  (registers mettle)
from mettle_core.interface import METHODS, MethodEntry, Registry, UnknownNameError

if TYPE_CHECKING:  # a runtime import would cycle: bench.tasks imports this module
    from bench.tasks.base import Task

TASKS: Registry[Task] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    TASKS.add(cls.name, cls())
    return cls


def get_method(name: str) -> MethodEntry:
    return METHODS.get(name)


def get_task(name: str) -> Task:
    _load_tasks()
    return TASKS.get(name)


def task_names() -> list[str]:
    _load_tasks()
    return TASKS.names()


def _load_tasks() -> None:
    import bench.tasks  # noqa: F401  (its __init__ imports every task module)


__all__ = ["METHODS", "TASKS", "UnknownNameError", "get_method", "get_task", "register_task", "task_names"]
