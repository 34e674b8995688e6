"""Registries of methods and tasks; importing this module registers every plug-in."""

from __future__ import annotations

import importlib

import baselines  # noqa: F401  (registers frozen, full, lora, lavish)
import mettle_core  # noqa: F401  (registers mettle)
from bench.tasks import TASK_MODULES
from bench.tasks.base import Task
from mettle_core.interface import METHODS, MethodEntry, Registry, UnknownNameError

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
    for module in TASK_MODULES:
        importlib.import_module(f"bench.tasks.{module}")


__all__ = ["METHODS", "TASKS", "UnknownNameError", "get_method", "get_task", "register_task", "task_names"]
