"""The gate that keeps a timing pass alone: two holders of one gate (shallow copies share its
condition and states, as the processes of `bench run --jobs` do), driven from two threads."""

from __future__ import annotations

import copy
import multiprocessing
import threading

from bench.gate import ProcessGate

WAIT_S = 10.0


def two_slots() -> tuple[ProcessGate, ProcessGate]:
    gate = ProcessGate(multiprocessing.get_context("spawn"), slots=2)
    first, second = gate, copy.copy(gate)
    first.slot, second.slot = 0, 1
    return first, second


def timed_in_thread(gate: ProcessGate, events: list[str]) -> threading.Thread:
    def timing_pass() -> None:
        gate.enter()
        with gate.alone():
            events.append("timed")
        gate.leave()

    thread = threading.Thread(target=timing_pass, daemon=True)
    thread.start()
    return thread


def test_a_timing_pass_waits_for_the_other_to_reach_a_checkpoint() -> None:
    trainer, timer = two_slots()
    events: list[str] = []
    trainer.enter()  # training: holds its share
    thread = timed_in_thread(timer, events)
    thread.join(timeout=0.3)
    assert thread.is_alive() and events == []  # the trainer is computing: no timing yet
    trainer.checkpoint()  # the trainer steps aside, and comes back only when the pass is over
    assert events == ["timed"]
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive()
    trainer.leave()


def test_a_checkpoint_with_no_timing_pass_asked_does_not_wait() -> None:
    trainer, other = two_slots()
    other.enter()
    trainer.enter()  # shares are not exclusive
    trainer.checkpoint()
    trainer.leave()
    other.leave()


def test_a_slot_reset_after_its_process_died_frees_the_others() -> None:
    dead, timer = two_slots()
    dead.enter()  # a process that died while holding its share
    events: list[str] = []
    thread = timed_in_thread(timer, events)
    thread.join(timeout=0.3)
    assert thread.is_alive()
    dead.reset(0)  # what the parent does when the process's pipe reads EOF
    thread.join(timeout=WAIT_S)
    assert events == ["timed"] and not thread.is_alive()


def test_new_shares_wait_while_a_pass_is_timed() -> None:
    timer, late = two_slots()
    timer.enter()
    entered = threading.Event()

    def enter_late() -> None:
        late.enter()
        entered.set()

    with timer.alone():
        thread = threading.Thread(target=enter_late, daemon=True)
        thread.start()
        assert not entered.wait(timeout=0.3)  # no share is given while the pass runs
    assert entered.wait(timeout=WAIT_S)
    timer.leave()
    late.leave()
