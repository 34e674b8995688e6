"""The clip workers: every item gets an outcome, whichever worker dies and when."""

from __future__ import annotations

import os
import signal
import time

from bench.data.clip_pool import death_reason, run_in_workers


def worker_pid(item: str) -> str:
    """The pid of the worker that ran `item`, as its outcome."""
    return str(os.getpid())


def test_every_item_gets_an_outcome_with_more_workers_than_items() -> None:
    outcomes = dict(run_in_workers(worker_pid, ["a", "b"], workers=3))
    assert sorted(outcomes) == ["a", "b"] and os.getpid() not in {int(pid) for pid in outcomes.values()}


def test_a_worker_killed_between_two_items_is_replaced_and_the_next_item_runs() -> None:
    outcomes = run_in_workers(worker_pid, ["a", "b"], workers=1)
    item, first = next(outcomes)  # the worker is idle until the next item is asked for
    os.kill(int(first), signal.SIGKILL)
    time.sleep(0.2)
    item2, second = next(outcomes)
    assert (item, item2) == ("a", "b") and second.isdigit() and second != first  # run, not lost
    assert list(outcomes) == []


def test_death_reason_names_the_signal() -> None:
    assert death_reason(-signal.SIGKILL) == "decoder process killed by SIGKILL (out of memory?)"
    assert death_reason(-signal.SIGSEGV) == "decoder process killed by SIGSEGV"
    assert death_reason(1) == "decoder process exited with code 1"
