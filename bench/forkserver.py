"""The one process a command forks its helper processes from: DataLoader workers (bench.data.loader),
profile points (bench.profile) and, on a CPU, `bench run`'s workers (bench.workers).

A helper must not be forked from the command itself (a fork copies its torch thread pools and any
CUDA state half-way, and can deadlock), and spawning one imports torch and timm afresh in every
helper (5-10 s each on 2 cores). Python's forkserver is a fresh interpreter that imports
`PRELOAD` once, runs nothing else and forks each helper from that clean state in a fraction of a
second. The preload list is the process's, fixed at the server's first start, so it names what
every kind of helper runs.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

PRELOAD = ["torch", "timm", "bench.data.media", "bench.data.avsbench", "bench.profile", "bench.workers"]


def context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
