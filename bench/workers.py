"""Runs in parallel processes (`bench run --workers N`), each with its share of the cores.

Small models use a second thread poorly (the tiny towers train 1.1-1.25 x faster on two threads
than on one), so on a CPU N runs at once, one core each, finish sooner than N runs in turn.
Every timing pass still runs alone on its device (bench.gate), a run is the same computation wherever it
runs (its record gives its threads), and only this process writes records. On CUDA each
worker has a GPU of its own (bench.gpus), and its record names it. A worker keeps
the datasets of its last task, and is given runs of that task first. A worker exits, quietly,
when this process dies, however it dies.

On a CPU the workers are forked from the command's forkserver (bench.forkserver), which has
imported torch and timm once: a spawned worker pays 5-7 CPU-s importing them, a cost a 2-core
machine feels in every command. On CUDA each is spawned, a fresh interpreter born with the
environment that shows it its one GPU (bench.gpus.only), whose start is nothing beside its runs.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from bench.checkpoint import RunInterrupted
from bench.config import ConfigError
from bench.data.errors import DataError
from bench.device import threads_per_worker
from bench.forkserver import context as forkserver_context
from bench.gate import Gate, ProcessGate
from bench.gpus import only
from bench.jobs import Context, DataCache, Display, Job, data_key, job_record, run_one
from bench.presets import get_preset
from bench.results import RunRecord, Status

STOP_WAIT_S = 60  # for a terminated worker to save its run's checkpoint and exit
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Worker:
    """The parent's handle on one process doing runs, and what that process holds."""

    def __init__(self, ctx: Any, slot: int, gate: Gate, context: Context, threads: int, gpu: str | None = None) -> None:
        self.slot = slot
        self.conn, child = ctx.Pipe()
        args = (child, slot, gate, context, threads)
        self.process = ctx.Process(target=serve, args=args, daemon=True)
        with only(gpu):  # on CUDA: the worker's one GPU, from its birth
            self.process.start()
        child.close()  # the parent's copy: the pipe reads EOF when the process dies
        self.job: Job | None = None
        self.data: str | None = None  # data_key of the datasets it holds
        self.started = 0.0

    def give(self, job: Job, data: str) -> None:
        self.conn.send(job)
        self.job, self.data, self.started = job, data, time.perf_counter()

    def stop(self) -> None:
        """An idle worker is asked to exit; one still in a run (the command is failing or
        interrupted) is sent SIGTERM: its run saves its checkpoint at its next step, has no
        record and resumes next time. One that does not end in time is killed."""
        if self.process.is_alive() and self.job is None:
            self.conn.send(None)
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_in_processes(
    jobs: list[Job],
    context: Context,
    display: Display,
    processes: int,
    take: Callable[[Job], bool] = lambda job: True,
    gpus: list[str] | None = None,
) -> Iterator[tuple[Job, RunRecord]]:
    """Each job that `take` gives this command (bench.claims) in one of `processes` processes,
    yielded as it finishes; with `gpus`, process i sees only gpus[i], and being alone on its
    device it times its steps without pausing the others (on a CPU they share one gate)."""
    ctx = forkserver_context() if gpus is None else multiprocessing.get_context("spawn")
    gate = ProcessGate(ctx, processes) if gpus is None else Gate()
    threads = threads_per_worker(processes)
    shape = get_preset(context.preset).shape
    pending = list(jobs)
    workers: list[Worker] = []

    def dispatch(worker: Worker) -> None:
        while pending:
            held = {w.data for w in workers if w is not worker and w.job is not None}
            job = next_job(pending, worker.data, held, shape)
            pending.remove(job)
            if take(job):
                worker.give(job, data_key(job.run, shape))
                display.start(worker.slot, job.label)
                return

    try:
        for slot in range(processes):
            workers.append(Worker(ctx, slot, gate, context, threads, gpus[slot] if gpus else None))
            dispatch(workers[-1])
        while any(w.job is not None for w in workers):
            busy = {w.conn: w for w in workers if w.job is not None}
            for conn in wait(list(busy)):
                worker = busy[conn]  # type: ignore[index]
                try:
                    kind, *body = worker.conn.recv()
                except EOFError:  # the process died (killed, out of memory, a crash in native code)
                    kind, body = "died", []
                if kind == "step":
                    display.step(worker.slot, *body)
                elif kind == "warning":
                    warnings.warn(body[0], body[1], stacklevel=1)
                elif kind == "usage":
                    raise ConfigError(body[0])
                elif kind == "interrupted":  # SIGTERM reached the worker: the command stops as if it got it
                    raise RunInterrupted(body[0])
                else:  # the run ended, with its record or with its process
                    job, worker.job = worker.job, None
                    assert job is not None
                    display.stop(worker.slot)
                    if kind == "died":
                        worker.process.join()
                        gate.reset(worker.slot)
                        error = f"its worker process died (exit code {worker.process.exitcode})"
                        yield job, job_record(job, context, Status.ERROR, error, time.perf_counter() - worker.started)
                        if pending:
                            gpu = gpus[worker.slot] if gpus else None
                            workers[worker.slot] = worker = Worker(ctx, worker.slot, gate, context, threads, gpu)
                    else:
                        yield job, body[0]
                    dispatch(worker)
    finally:
        for worker in workers:
            worker.stop()


def next_job(pending: list[Job], mine: str | None, held: set[str | None], shape: Any) -> Job:
    """The first pending job on the datasets this worker holds, else on datasets no other
    worker holds (each task's data is built once where possible), else the first."""
    keys = [data_key(job.run, shape) for job in pending]
    for wanted in (lambda k: k == mine, lambda k: k not in held):
        for job, key in zip(pending, keys, strict=True):
            if wanted(key):
                return job
    return pending[0]


def serve(conn: Connection, slot: int, gate: ProcessGate, context: Context, threads: int) -> None:
    """A worker process: do the jobs the command sends until it sends None. Without the command
    (killed, even by SIGKILL, which leaves it no time to stop us) it exits at once and quietly:
    its run has no one to report to, and reruns next time."""
    _die_with_parent()
    command = multiprocessing.parent_process()
    if command is not None and not command.is_alive():  # it died before the line above
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    torch.set_num_threads(threads)
    gate.slot = slot
    preset, cache = get_preset(context.preset), DataCache()
    warnings.showwarning = lambda message, category, *rest: conn.send(("warning", str(message), category))

    def step(done: int, total: int, epoch: int | None, loss: float | None) -> None:
        conn.send(("step", done, total, epoch, loss))

    try:
        while (job := conn.recv()) is not None:
            gate.enter()
            try:
                record = run_one(job, preset, cache, context, step, gate)
            except (ConfigError, DataError) as err:
                conn.send(("usage", str(err)))
                return
            except RunInterrupted as err:  # its checkpoint is saved
                conn.send(("interrupted", err.signum))
                return
            finally:
                gate.leave()
            conn.send(("record", record))
    except (EOFError, ConnectionError):  # the pipe's other end is closed: the parent is gone
        return


def _die_with_parent() -> None:
    """On Linux, have the kernel send this process SIGKILL when its parent dies: the command, or
    the forkserver it was forked from, which exits when the command does. Elsewhere a worker
    notices at its next message, when the pipe breaks."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
