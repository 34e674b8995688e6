"""Makes tests/ importable (tests/tiny.py) from every test folder, and gives each pytest-xdist
worker (`python -m pytest -n auto`) cores of its own.

Two workers that each think they have every core run twice the threads there are cores for, and
torch's OpenMP threads spin while they wait: on 2 cores the suite took 1.7 x the CPU time it
takes in one process. A worker pinned to its share instead runs one thread per core it holds, and
so do the commands its tests start (they inherit the affinity; bench counts cores by it).
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the suite also runs without it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core this process may use (its affinity, capped by a
    container's CPU quota), not one per core the host has."""
    from bench.device import usable_cores

    return usable_cores()


def pytest_configure(config: pytest.Config) -> None:
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        pin_to_share(int(worker.removeprefix("gw")), int(count))


def pin_to_share(index: int, workers: int) -> None:
    """Worker `index` of `workers` keeps its contiguous share of the usable cores (shares wrap
    round when there are more workers than cores)."""
    import torch

    from bench.device import usable_cores

    cores = sorted(os.sched_getaffinity(0))
    share = max(1, usable_cores() // workers)
    start = (index * share) % len(cores)
    mine = cores[start : start + share]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with end-to-end (slow) tests first: under `-n` a file goes to one worker whole, and a
    long one handed out last would keep its worker busy while the others sit idle."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
