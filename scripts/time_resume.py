"""Timing: a run killed outright (`kill -9`) part-way, then rerun, against the same run uninterrupted.

Runs `python -m bench run <ARGS> --out A` to the end and times it (T); starts the same command
into `B`, sends SIGKILL to it (and its process group) at `--at` x T, reruns it into `B` to the
end and times the rerun (R). The rerun resumes from the run's last checkpoint (written at each
epoch end and a minute into an epoch, under B/checkpoints/<run key>/), so it redoes only the
training after it. Prints T, R,
R / T and whether each record of B equals A's (metrics, val history, best epoch), and writes
them as JSON to `--report`. A timing, not a test: the figures depend on the machine and on what
else runs on it.

    python scripts/time_resume.py [--at 0.7] [--report FILE] -- --methods lavish --tasks avs_s4 \
        --preset tiny --set train.epochs=8 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPARED = ("metrics", "val_history", "best_epoch")


def bench(args: list[str], out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench", "run", *args, "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def timed(args: list[str], out: Path) -> float:
    start = time.perf_counter()
    process = bench(args, out)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"bench run exited {process.returncode}:\n{err.decode()}")
    return time.perf_counter() - start


def records(out: Path) -> dict[str, dict]:
    lines = (out / "runs.jsonl").read_text().splitlines()
    return {r["key"]: r for r in map(json.loads, filter(None, lines))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, default=0.7, help="kill at this share of the uninterrupted wall time")
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="folder for the two outputs (default: a temporary one)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the `bench run` arguments")
    args = parser.parse_args()
    run_args = [a for a in args.bench_args if a != "--"]
    work = args.work or Path(tempfile.mkdtemp(prefix="resume-timing-"))
    whole, cut = work / "whole", work / "cut"
    uninterrupted = timed(run_args, whole)
    process = bench(run_args, cut)
    time.sleep(args.at * uninterrupted)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = sorted(str(p.relative_to(cut)) for p in cut.glob("checkpoints/*/checkpoint.pt"))
    rerun = timed(run_args, cut)
    want, got = records(whole), records(cut)
    equal = got.keys() == want.keys() and all(all(got[k][f] == want[k][f] for f in COMPARED) for k in want)
    report = {
        "command": ["python", "-m", "bench", "run", *run_args],
        "killed_at_s": round(args.at * uninterrupted, 2),
        "uninterrupted_s": round(uninterrupted, 2),
        "rerun_s": round(rerun, 2),
        "rerun_share": round(rerun / uninterrupted, 3),
        "checkpoints_at_kill": checkpoints,
        "records_equal": equal,
    }
    print(json.dumps(report, indent=2))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
