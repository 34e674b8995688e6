"""Claims on a shared results folder: several commands running one plan into one OUT (on one
machine, or on several sharing a filesystem) do each run once.

Before a run starts, its command claims it with a file OUT/claims/<run key>.<generation> that
names the holder (host, pid) and a heartbeat, which a thread of the holder refreshes while the
command runs. The file is written whole under a temporary name and hard-linked into place: the
link fails when the name exists, on a local disk and on NFS alike, so of two claimants one wins.
Others skip a run whose claim is live. A claim whose heartbeat is older than the timeout (its
holder was killed, or its machine lost) is taken over by creating the next generation, which
again only one taker can do; the run is redone, and a run that left a checkpoint resumes from
it. A run's claim is removed after its record is written, and a claimant reads the records
again once it holds a claim, so a run recorded meanwhile is never redone. Heartbeats are wall
clock times: machines sharing a folder need clocks synchronised well within the timeout. On
the holder's own machine a claim whose process is gone is stale at once (a killed command's
runs are taken over without waiting).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from bench.jobs import Job
    from bench.results import ResultsStore, RunRecord

DEFAULT_TIMEOUT_S = 300.0  # a lost machine's runs wait this long; a heartbeat goes every quarter of it
CLAIMS_DIR = "claims"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, and when it last said it was alive (time.time())."""

    host: str
    pid: int
    token: str  # this process's claims, whatever pid another host gives its own
    heartbeat: float
    machine: str = ""  # where `pid` means this process (bench.claims.machine); "" when unknown

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


class Claims:
    """The claims of one results folder, as one process sees them and holds its own."""

    def __init__(self, out_dir: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.folder = Path(out_dir) / CLAIMS_DIR
        self.timeout = timeout
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        self.machine = machine()
        self._held: dict[str, int] = {}  # run key -> the generation this process holds
        self._lock = threading.Lock()  # the heartbeat thread reads _held while runs take and release

    def _path(self, key: str, generation: int) -> Path:
        return self.folder / f"{key}.{generation}"

    def generations(self, key: str) -> list[int]:
        """The generations of `key`'s claim present, oldest first (more than one only during a takeover)."""
        found = [p.name.rpartition(".")[2] for p in self.folder.glob(f"{key}.*")]
        return sorted(int(g) for g in found if g.isdigit())

    def holder(self, key: str) -> tuple[int, Holder] | None:
        """The current claim on `key` (its newest generation) and its holder; None when unclaimed."""
        while generations := self.generations(key):
            newest = generations[-1]
            try:
                return newest, Holder(**json.loads(self._path(key, newest).read_text()))
            except FileNotFoundError:  # released or taken over while we looked: look again
                continue
            except (ValueError, TypeError):  # not written by this module: as good as dead
                return newest, Holder("?", 0, "", 0.0)
        return None

    def stale(self, holder: Holder) -> bool:
        """Silent past the timeout, or, seen from the holder's own machine, its process is gone."""
        if time.time() - holder.heartbeat > self.timeout:
            return True
        return bool(holder.machine) and holder.machine == self.machine and not _alive(holder.pid)

    def acquire(self, key: str) -> bool:
        """Claim the run: True when this process now holds it, as a new claim or a stale one taken over."""
        current = self.holder(key)
        if current is not None and not self.stale(current[1]):
            return False
        generation = 0 if current is None else current[0] + 1
        if not self._create(key, generation):
            return False  # another process claimed it, or took it over, first
        for older in self.generations(key):
            if older < generation:
                self._path(key, older).unlink(missing_ok=True)
        with self._lock:
            self._held[key] = generation
        return True

    def release(self, key: str) -> None:
        with self._lock:  # not while the heartbeat rewrites it, which would bring it back
            generation = self._held.pop(key, None)
            if generation is not None:
                self._path(key, generation).unlink(missing_ok=True)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def refresh(self) -> None:
        """Renew the heartbeat of every claim held; one taken over meanwhile (this process was
        stalled past the timeout) is no longer this process's to renew."""
        for key in self.held():
            with self._lock:
                generation = self._held.get(key)
                if generation is None:  # released since
                    continue
                if self.generations(key)[-1:] != [generation]:
                    del self._held[key]
                    continue
                tmp = self._temporary(key, generation)
                tmp.write_text(self._content())
                os.replace(tmp, self._path(key, generation))

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Refresh the claims held every quarter of the timeout while the block runs; at its end,
        however it ends, release those still held, so another command need not wait to take them."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.timeout / 4):
                self.refresh()

        thread = threading.Thread(target=beat, name="claims-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            for key in self.held():
                self.release(key)

    def _content(self) -> str:
        return json.dumps(asdict(Holder(self.host, self.pid, self.token, time.time(), self.machine)))

    def _temporary(self, key: str, generation: int) -> Path:
        return self.folder / f".{key}.{generation}.{self.token}.tmp"  # hidden from generations()

    def _create(self, key: str, generation: int) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._temporary(key, generation)
        tmp.write_text(self._content())
        try:
            os.link(tmp, self._path(key, generation))
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)


def machine() -> str:
    """This boot of this machine and this process's pid namespace: where a claim's pid can be
    looked up (containers sharing a hostname may not see each other's processes); "" off Linux."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Solo:
    """A command that shares its runs with no other (under torchrun, where every rank does
    every run of the command): it takes every run and waits for none."""

    def __init__(self) -> None:
        self.finished: list[tuple[Job, dict[str, Any]]] = []  # runs others recorded while this command ran

    def take(self, job: Job) -> bool:
        return True

    def keep(self, job: Job, record: RunRecord) -> bool:
        return True

    def release(self, job: Job) -> None:
        """Nothing was claimed."""

    def wait(self) -> list[Job]:
        return []

    def rounds(
        self, jobs: list[Job], run: Callable[[list[Job]], Iterator[tuple[Job, RunRecord]]]
    ) -> Iterator[tuple[Job, RunRecord]]:
        """What `run` yields for the jobs this command takes, then, round after round, for
        those it takes over when their holders stop or die, until every job is recorded."""
        while jobs:
            yield from run(jobs)
            jobs = self.wait()

    @contextmanager
    def held(self) -> Iterator[None]:
        yield


class Share(Solo):
    """This command's part of a plan that other commands may be running into the same OUT:
    it takes the runs it can claim, leaves those others hold, and at the end waits for them,
    taking over any whose holder died."""

    def __init__(self, claims: Claims, store: ResultsStore, known: Sequence[dict[str, Any]], console: Console) -> None:
        super().__init__()
        self.claims, self.store, self.console = claims, store, console
        self.start = len(known)  # the store's records when this command read it; later ones are appended after
        self.mine: set[str] = set()  # run_id of the records this command wrote
        self.elsewhere: dict[str, Job] = {}  # run key -> a run another command holds
        self.poll_s = min(self.claims.timeout / 4, 5.0)

    def _recorded_by_others(self) -> dict[str, dict[str, Any]]:
        """Run key -> the latest record another command wrote since this one read the store."""
        since = self.store.load().records[self.start :]
        return {r["key"]: r for r in since if "key" in r and r.get("run_id") not in self.mine}

    def take(self, job: Job) -> bool:
        """Whether this command does the run now: it claimed it, and no one recorded it meanwhile."""
        if not self.claims.acquire(job.key):
            current = self.claims.holder(job.key)
            holder = current[1].describe() if current else "another command"
            self.console.print(f"leave {job.label}: claimed by {holder}")
            self.elsewhere[job.key] = job
            return False
        if (record := self._recorded_by_others().get(job.key)) is not None:
            self.claims.release(job.key)
            self.finished.append((job, record))
            return False
        return True

    def keep(self, job: Job, record: RunRecord) -> bool:
        """Whether to append the record: not when another command recorded the run meanwhile
        (it took the claim over while this one was stalled past the timeout)."""
        self.mine.add(record.run_id)
        return job.key not in self._recorded_by_others()

    def release(self, job: Job) -> None:
        self.claims.release(job.key)

    def wait(self) -> list[Job]:
        """Block until every run held elsewhere is recorded, or return those whose claims went
        stale or were dropped unrecorded (a stopped command), for this command to take."""
        if self.elsewhere:
            self.console.print(f"waiting for {len(self.elsewhere)} run(s) other commands hold")
        while self.elsewhere:
            recorded = self._recorded_by_others()
            free = []
            for key, job in list(self.elsewhere.items()):
                if key in recorded:
                    self.finished.append((job, recorded.pop(key)))
                elif (current := self.claims.holder(key)) is None or self.claims.stale(current[1]):
                    free.append(job)
                else:
                    continue
                del self.elsewhere[key]
            if free:
                return free
            if self.elsewhere:
                time.sleep(self.poll_s)
        return []

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.claims.heartbeat():
            yield


def open_share(out_dir: Path, timeout: float, known: Sequence[dict[str, Any]], console: Console) -> Solo:
    """Claims for a command that may share OUT with others; none under torchrun, whose ranks
    all do every run of their command (one rank must not leave a run to another)."""
    from bench.device import world_size  # here: the CLI imports this module for its defaults, and stays light
    from bench.results import ResultsStore

    if world_size() > 1:
        return Solo()
    return Share(Claims(out_dir, timeout), ResultsStore(out_dir), known, console)
