"""The one process a command forks its helper processes from: DataLoader workers (bench.data.loader),
profile points (bench.profile), on a CPU `bench run`'s workers (bench.workers), and `bench sweep`'s
worker processes, each the same command (`same_command`).

A helper must not be forked from the command itself (a fork copies its torch thread pools and any
CUDA state half-way, and can deadlock), and spawning one imports torch and timm afresh in every
helper (5-10 s each on 2 cores). Python's forkserver is a fresh interpreter that imports
`PRELOAD` once, runs nothing else and forks each helper from that clean state in a fraction of a
second. The preload list is the process's, fixed at the server's first start, so it names what
every kind of helper runs.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
from multiprocessing.context import BaseContext

import torch

PRELOAD = ["torch", "timm", "bench.data.media", "bench.data.avsbench", "bench.profile", "bench.workers"]


def context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def same_command(argv: list[str], threads: int) -> None:
    """`python -m bench <argv>` in a process forked from the server (bench.sweep's workers),
    with `threads` torch threads unless OMP_NUM_THREADS says otherwise; its exit code is the
    process's."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    sys.argv = ["bench", *argv]
    runpy.run_module("bench", run_name="__main__", alter_sys=True)
