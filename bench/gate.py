"""Keeps a timing pass alone on the machine when several runs share it (`bench run --jobs N`).

Every process computes while it holds a share of the machine; a process about to time a step
asks to be alone: new shares wait, the others give theirs back at their next checkpoint (a
training step or an evaluation batch), and the timed steps run with nothing else computing.
A single process needs none of this: `Gate` is the no-op the serial runner uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext


class Gate:
    """One process alone on the machine: nothing to wait for."""

    def enter(self) -> None:
        """Take a share before computing."""

    def leave(self) -> None:
        """Give the share back after computing."""

    def checkpoint(self) -> None:
        """Between steps: let a waiting timing pass run first."""

    @contextmanager
    def alone(self) -> Iterator[None]:
        yield

    def reset(self, slot: int) -> None:
        """A process that died held nothing here."""


IDLE, SHARING, WAITING, ALONE = 0, 1, 2, 3  # a slot's state


class ProcessGate(Gate):
    """A gate shared by `slots` processes (pass it to them when they start; each sets `slot` to
    its own). The parent resets the slot of a process that died (`reset`), whatever it held."""

    def __init__(self, ctx: BaseContext, slots: int) -> None:
        self._cond = ctx.Condition()
        self._state = ctx.Array("i", slots, lock=False)  # guarded by _cond
        self.slot = -1

    def _timing_asked(self) -> bool:
        return any(s in (WAITING, ALONE) for s in self._state)

    def _others_compute(self) -> bool:
        return any(s in (SHARING, ALONE) for i, s in enumerate(self._state) if i != self.slot)

    def enter(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._timing_asked())
            self._state[self.slot] = SHARING

    def leave(self) -> None:
        self._set(self.slot, IDLE)

    def checkpoint(self) -> None:
        if self._timing_asked():  # an unlocked read: a request made just after is served at the next one
            self.leave()
            self.enter()

    @contextmanager
    def alone(self) -> Iterator[None]:
        self._set(self.slot, WAITING)
        with self._cond:
            self._cond.wait_for(lambda: not self._others_compute())
            self._state[self.slot] = ALONE
        try:
            yield
        finally:
            self.leave()
            self.enter()

    def reset(self, slot: int) -> None:
        """A process that died must not keep the others waiting."""
        self._set(slot, IDLE)

    def _set(self, slot: int, state: int) -> None:
        with self._cond:
            self._state[slot] = state
            self._cond.notify_all()
