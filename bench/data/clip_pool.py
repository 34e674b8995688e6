"""Worker processes for `bench data prepare`: one clip at a time each, robust to a killed decoder.

A concurrent.futures pool breaks as a whole when one of its workers dies (the OOM killer
takes a decoder): every clip still queued is abandoned and the command ends in a
BrokenProcessPool traceback. Here each worker has its own pipe, so the parent knows which
clip a dead worker held: that clip fails with the signal that killed it, a new worker takes
the dead one's place, and the other workers go on with their clips.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

Item = TypeVar("Item")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WAIT_S = 0.5  # how often `on_wait` runs while every worker is busy


def die_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies, so that a killed `data prepare`
    leaves no decoder behind (hundreds of MB each). On Linux the kernel sends SIGKILL
    (prctl PR_SET_PDEATHSIG), which works even while the worker is deep in a decoder's C code,
    where a thread polling os.getppid() could wait for the GIL; other systems get that thread.
    The parent may have died before this ran: hence the check of who the parent is now."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _serve(conn: Connection, parent: int, work: Callable[[Item], str | None]) -> None:
    """A worker: run `work` on each item received and send back its outcome, until None comes.
    Ctrl-C is left to the parent, which stops the workers; output goes to the real stderr, not
    through the parent's progress display."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    while (item := conn.recv()) is not None:
        conn.send(work(item))


def death_reason(exitcode: int | None) -> str:
    """Why a worker ended in the middle of a clip, from its exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"decoder process killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"decoder process exited with code {exitcode}"


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    item: Any = None  # the item it is working on, when busy
    busy: bool = False


def run_in_workers(
    work: Callable[[Item], str | None], items: list[Item], workers: int, on_wait: Callable[[], None] = lambda: None
) -> Iterator[tuple[Item, str | None]]:
    """(item, None or the reason it failed) for every item, as workers finish them; `work`
    returns the reason, a worker's death gives it (death_reason). Close the iterator to stop
    early: the workers are killed. `on_wait` runs every WAIT_S while no worker finishes."""
    # fork: a worker starts at once instead of importing the CLI's modules again (seconds each).
    # The parent runs no other thread (the progress display refreshes from `on_wait`), so a
    # worker forked to replace a dead one inherits no lock held by another thread.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    todo = deque(items)

    def start() -> _Worker:
        here, there = context.Pipe()
        process = context.Process(target=_serve, args=(there, os.getpid(), work), daemon=True)
        process.start()
        there.close()
        return _Worker(process, here)

    pool = [start() for _ in range(min(workers, len(todo)))]
    try:
        while True:
            for i, w in enumerate(pool):
                if not w.busy and todo:
                    item = todo.popleft()
                    try:
                        w.conn.send(item)
                    except OSError:  # it died between two items: a new worker takes the item
                        w.process.join()
                        w.conn.close()
                        pool[i] = w = start()
                        w.conn.send(item)
                    w.item, w.busy = item, True
            busy = [w for w in pool if w.busy]
            if not busy:
                return
            ready = wait([w.conn for w in busy], timeout=WAIT_S)
            if not ready:
                on_wait()
            for w in busy:
                if w.conn not in ready:
                    continue
                try:
                    outcome = w.conn.recv()
                except EOFError:  # it died mid-item
                    w.process.join()
                    outcome = death_reason(w.process.exitcode)
                    w.conn.close()
                    pool.remove(w)
                    if todo:
                        pool.append(start())
                w.busy = False
                yield w.item, outcome
    finally:
        for w in pool:
            if w.busy:
                w.process.kill()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in pool:
            w.process.join(5.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
