"""Claims on a shared results folder: a claim is created whole and by one claimant only, a live
holder's runs are left to it, a stale claim is taken over by exactly one of several takers, the
heartbeat keeps a claim alive past the timeout, and a released claim is free again. End to end:
two commands on one OUT do each run of an 8-run plan once, and when one is killed (SIGKILL)
the other finishes its runs too: at once on their machine, where the killed pid is seen gone,
and after the claim timeout from another machine (the heartbeat tests above)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from commands import BenchProcess
from rich.console import Console

from bench.claims import Claims, Share
from bench.config import ResolvedRun
from bench.jobs import Job, job_key
from bench.plan import RunPlan, load_plan, resolve
from bench.results import Kind, ResultsStore, RunRecord, Status

REPO = Path(__file__).resolve().parents[2]
PLAN = """preset = "smoke"
tasks = ["ave"]
seeds = [0, 1, 2, 3]
set = ["train.epochs=1", "measure.enabled=false"]

[candidates]
frozen = [[]]
full = [[]]
"""  # 8 runs of a second or two each
TIMEOUT = 3.0  # the commands' --claim-timeout


def job(key: str) -> Job:
    return Job(0, SimpleNamespace(method="frozen", task="ave", seed=0), key)  # type: ignore[arg-type]


def ok_record(key: str) -> RunRecord:
    return RunRecord(
        Kind.RUN, "frozen", "ave", "smoke", Status.OK, {}, key=key, source="synthetic", seed=0, metrics={"a": 1.0}
    )


def claim_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "claims").iterdir())


def test_a_claim_is_created_whole_naming_its_holder_and_only_once(tmp_path: Path) -> None:
    first, second = Claims(tmp_path), Claims(tmp_path)
    assert first.acquire("k") and not second.acquire("k")
    assert claim_files(tmp_path) == ["k.0"]  # no temporary file left behind
    content = json.loads((tmp_path / "claims" / "k.0").read_text())
    assert content["host"] == socket.gethostname() and content["pid"] == os.getpid()
    assert content["token"] == first.token and abs(content["heartbeat"] - time.time()) < 5
    generation, holder = second.holder("k")
    assert generation == 0 and holder.token == first.token and not second.stale(holder)


def test_of_claimants_racing_for_a_free_run_or_a_stale_claim_exactly_one_wins(tmp_path: Path) -> None:
    dead = Claims(tmp_path, timeout=0.1)
    for key in range(20):
        if key % 2:  # odd runs: a stale claim to take over; even runs: unclaimed
            assert dead.acquire(str(key))
    time.sleep(0.2)
    claimants = [Claims(tmp_path, timeout=0.1) for _ in range(6)]
    for key in map(str, range(20)):
        start, wins = threading.Barrier(len(claimants)), []

        def claim(claims: Claims, key: str = key, start: threading.Barrier = start, wins: list = wins) -> None:
            start.wait()
            if claims.acquire(key):
                wins.append(claims.token)

        threads = [threading.Thread(target=claim, args=(c,)) for c in claimants]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1, key
        generation, holder = claimants[0].holder(key)
        assert holder.token == wins[0] and generation == int(key) % 2
        assert claim_files(tmp_path).count(f"{key}.{generation}") == 1
    assert not [name for name in claim_files(tmp_path) if name.endswith(".0") and int(name.split(".")[0]) % 2]


def test_a_live_holder_keeps_its_run_and_a_stale_one_loses_it(tmp_path: Path) -> None:
    holder, other = Claims(tmp_path, timeout=0.5), Claims(tmp_path, timeout=0.5)
    assert holder.acquire("k")
    assert not other.acquire("k")  # live: left to its holder
    time.sleep(0.7)  # no heartbeat for longer than the timeout: its command was killed, or stalled
    assert other.acquire("k")
    assert claim_files(tmp_path) == ["k.1"] and other.holder("k")[1].token == other.token
    holder.refresh()  # the stalled holder wakes up: the claim is no longer its own to renew
    assert holder.held() == [] and other.holder("k")[1].token == other.token


def test_a_claim_whose_process_is_gone_is_stale_at_once_on_its_machine_only(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    other = Claims(tmp_path, timeout=60)
    (tmp_path / "claims").mkdir()
    for key, machine in (("here", other.machine), ("elsewhere", "another-boot/pid:[1]")):
        holder = {"host": other.host, "pid": pid, "token": "t", "heartbeat": time.time(), "machine": machine}
        (tmp_path / "claims" / f"{key}.0").write_text(json.dumps(holder))
    assert other.machine and other.acquire("here")  # a killed command on this machine: taken at once
    assert not other.acquire("elsewhere")  # a pid of another machine (or container) says nothing here


def test_the_heartbeat_keeps_a_claim_alive_and_its_end_releases_it(tmp_path: Path) -> None:
    holder, other = Claims(tmp_path, timeout=0.4), Claims(tmp_path, timeout=0.4)
    with holder.heartbeat():
        assert holder.acquire("k")
        first = holder.holder("k")[1].heartbeat
        time.sleep(1.0)  # 2.5 timeouts
        assert not other.acquire("k")
        assert holder.holder("k")[1].heartbeat > first + 0.2
    assert claim_files(tmp_path) == []  # the block's end released what it still held
    assert other.acquire("k")


def test_a_released_claim_is_free_again(tmp_path: Path) -> None:
    holder, other = Claims(tmp_path), Claims(tmp_path)
    assert holder.acquire("k")
    holder.release("k")
    assert claim_files(tmp_path) == [] and holder.held() == []
    assert other.acquire("k") and claim_files(tmp_path) == ["k.0"]


def test_a_share_waits_for_a_live_holder_takes_over_a_dead_one_and_skips_what_others_recorded(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    other = Claims(tmp_path, timeout=0.5)
    share = Share(Claims(tmp_path, timeout=0.5), store, [], Console(quiet=True))
    assert other.acquire("dies") and other.acquire("finishes")
    assert not share.take(job("dies")) and not share.take(job("finishes"))
    store.append(ok_record("finishes"))  # the other command finishes one run and releases it
    other.release("finishes")
    started = time.monotonic()
    (free,) = share.wait()  # and dies holding the other
    assert free.key == "dies" and time.monotonic() - started >= 0.4
    assert [(j.key, r["metrics"]) for j, r in share.finished] == [("finishes", {"a": 1.0})]
    assert share.take(free) and claim_files(tmp_path) == ["dies.1"]
    record = ok_record("dies")
    assert share.keep(free, record)
    store.append(record)
    share.release(free)
    assert claim_files(tmp_path) == []
    # a run recorded by another command between this one's look at the records and its claim is not redone
    store.append(ok_record("raced"))
    assert not share.take(job("raced")) and share.finished[-1][0].key == "raced" and claim_files(tmp_path) == []


def test_a_record_is_not_appended_twice_when_a_taker_recorded_the_run_first(tmp_path: Path) -> None:
    """A holder stalled past the timeout: its run was taken over and recorded by the taker."""
    store = ResultsStore(tmp_path)
    share = Share(Claims(tmp_path), store, [], Console(quiet=True))
    assert share.take(job("k"))
    store.append(ok_record("k"))  # the taker's record
    assert not share.keep(job("k"), ok_record("k"))


class Command:
    """`python -m bench run` in a process of its own (tests/commands.py), its stderr kept in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.proc = BenchProcess(args, log, REPO)

    def stderr(self) -> str:
        return " ".join(self.proc.stderr().split())


def plan_commands(tmp_path: Path, count: int = 2) -> tuple[list[Command], Path, set[str]]:
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    out = tmp_path / "out"
    keys = {job_key(run) for run in resolve_plan(plan)}
    args = ["run", "--plan", str(plan), "--out", str(out), "--device", "cpu", "--workers", "1"]
    args += ["--claim-timeout", str(TIMEOUT)]
    return [Command(args, tmp_path / f"stderr{i}.txt") for i in range(count)], out, keys


def resolve_plan(path: Path) -> list[ResolvedRun]:
    file = load_plan(path)
    plan = RunPlan(file.methods, file.tasks or [], file.preset or "", file.seeds or [], device="cpu")
    plan.overrides, plan.candidates = file.overrides, file.candidates
    return resolve(plan)


def assert_each_run_once(out: Path, keys: set[str]) -> None:
    report = ResultsStore(out).load()
    assert not report.bad_lines
    recorded = [r["key"] for r in report.records]
    assert len(keys) == 8 and sorted(recorded) == sorted(keys)  # each of the 8 runs once
    assert all(r["status"] == "ok" for r in report.records)
    assert not list((out / "claims").iterdir())


@pytest.mark.slow
def test_two_commands_on_one_folder_do_each_run_once(tmp_path: Path) -> None:
    commands, out, keys = plan_commands(tmp_path)
    try:
        codes = [c.proc.wait(timeout=600) for c in commands]
    finally:
        for c in commands:
            c.proc.kill()
    assert codes == [0, 0], [c.stderr() for c in commands]
    assert_each_run_once(out, keys)
    for command in commands:  # both did runs, and each tabled all eight
        assert "done frozen" in command.stderr() or "done full" in command.stderr()
        assert "recorded by another command" in command.stderr()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills a process")
def test_when_one_command_is_killed_the_other_does_its_runs(tmp_path: Path) -> None:
    (victim, survivor), out, keys = plan_commands(tmp_path)
    claims = Claims(out)
    try:
        deadline = time.monotonic() + 300
        while not (len(ResultsStore(out).load().records) >= 2 and held_by(claims, keys, victim.proc.pid)):
            assert time.monotonic() < deadline and victim.proc.poll() is None, victim.stderr()
            time.sleep(0.05)
        victim.proc.send_signal(signal.SIGKILL)  # mid-run, holding a claim that no heartbeat renews
        victim.proc.wait()
        (key,) = held_by(claims, keys, victim.proc.pid)
        assert survivor.proc.wait(timeout=600) == 0, survivor.stderr()
    finally:
        victim.proc.kill()
        survivor.proc.kill()
    assert_each_run_once(out, keys)
    (record,) = [r for r in ResultsStore(out).load().records if r["key"] == key]
    assert f"done {record['method']} / {record['task']} / seed {record['seed']}" in survivor.stderr()


def held_by(claims: Claims, keys: set[str], pid: int) -> list[str]:
    return [k for k in keys if (current := claims.holder(k)) is not None and current[1].pid == pid]
