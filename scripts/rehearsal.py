"""A paper-scale rehearsal anyone can run: what a long run on real data goes through, in minutes.

1. Writes N small AVE-layout clips (10 s videos with sound, the annotation and split files)
   and prepares them with `bench data prepare ave`.
2. Trains every method for one epoch on the preset's towers (random weights unless
   `--weights ROLE=SOURCE` are given), one `python -m bench run` per method, each with its
   checkpoint kept (`--keep-checkpoints`).
3. Stops one run mid-epoch with SIGTERM, as a batch scheduler does before preemption, and
   reruns its command: the resumed record must equal the uninterrupted one (metrics, val
   history, best epoch).
Its report, per method: the median training-step time, the run's peak RSS, its
data_wait_fraction, its checkpoint's size (trainable state only) and, for the stopped run,
whether the resumed record is equal; written as README.md and rehearsal.json under --report.

CPU (default): batch 1, 2 training steps per method. `--gpu`: CUDA with bf16 autocast,
`--steps` (50) training steps per method at the preset's batch. Real AVE clips have 10
segments: a prepared tree is always read at T = 10. Methods run cheapest first and the
report is rewritten after each, so a rehearsal cut short leaves a partial report.

    python scripts/rehearsal.py --report results/rehearsal
    python scripts/rehearsal.py --gpu --report results/rehearsal-gpu
    python scripts/rehearsal.py --prepare-only --work /tmp/tree --steps 16   # only the prepared clips
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# cheapest first (by CPU step time at T = 10), so that a rehearsal cut short has reported the most
METHODS = ["frozen", "mettle", "lst", "lora", "avmoe", "lavish", "dgsct", "full"]
CATEGORIES = ["Banjo", "Church bell", "Dog barking", "Male speech, man speaking"]  # AVE names
HEADER = "Category&VideoID&Quality&StartTime&EndTime\n"
CLIP_SECONDS, CLIP_FPS, CLIP_SIZE, CLIP_RATE = 10, 4, 64, 16000
STAMPS_ENV = "REHEARSAL_STEP_STAMPS"  # the child writes one perf_counter per training step here
STOP_AT_ENV = "REHEARSAL_SIGTERM_AT_STEP"  # the child sends itself SIGTERM during this step


# --- 1. clips in the AVE release's layout, prepared ---------------------------------------


def write_clip(path: Path, index: int) -> None:
    """A 10 s clip: a square moving over a coloured ground and a tone, both set by `index`."""
    import av

    rng = np.random.default_rng(index)
    ground, hz = rng.integers(0, 200, 3, dtype=np.uint8), 220.0 * (1 + index % 7)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=CLIP_FPS)
        video.width = video.height = CLIP_SIZE
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=CLIP_RATE)
        audio.layout = "mono"
        for i in range(CLIP_SECONDS * CLIP_FPS):
            img = np.empty((CLIP_SIZE, CLIP_SIZE, 3), np.uint8)
            img[:] = ground
            x = (i * 5) % (CLIP_SIZE - 16)
            img[24:40, x : x + 16] = 255
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        t = np.arange(CLIP_SECONDS * CLIP_RATE) / CLIP_RATE
        wave = (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        for s in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, s : s + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = CLIP_RATE, s, Fraction(1, CLIP_RATE)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


def write_raw_ave(src: Path, splits: dict[str, int]) -> None:
    """`splits[s]` clips per split, with Annotations.txt and the three split lists: clip i
    holds an event of CATEGORIES[i % 4] over a stretch of its 10 segments."""
    src.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {}
    index = 0
    for split, count in splits.items():
        rows[split] = []
        for _ in range(count):
            video = f"clip{index:04d}"
            write_clip(src / f"{video}.mp4", index)
            start = index % 5
            rows[split].append(f"{CATEGORIES[index % len(CATEGORIES)]}&{video}&good&{start}&{start + 5}\n")
            index += 1
    (src / "Annotations.txt").write_text(HEADER + "".join(sum(rows.values(), [])))
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (src / name).write_text(HEADER + "".join(rows[split]))


# --- 2. runs, timed and measured ------------------------------------------------------------


@dataclass
class RunResult:
    """One `bench run` process: its exit code, peak RSS and per-step timestamps."""

    exit_code: int
    wall_s: float
    peak_rss_bytes: int
    stamps: list[float]

    @property
    def step_s(self) -> float | None:
        """The median time between consecutive training steps (the first step also starts the loader)."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(gaps) if gaps else None


def bench_run(argv: list[str], log: Path, stop_at_step: int | None = None) -> RunResult:
    """`python -m bench <argv>` in a child process of its own (its peak RSS is its own)."""
    stamps = log.with_suffix(".steps")
    stamps.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env[STAMPS_ENV] = str(stamps)
    if stop_at_step is not None:
        env[STOP_AT_ENV] = str(stop_at_step)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    times = [float(line) for line in stamps.read_text().split()] if stamps.exists() else []
    return RunResult(proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024, times)


def child(argv: list[str]) -> int:
    """`bench.cli.main(argv)`, noting the time of each training step and, when asked, sending
    this process SIGTERM during one: the run stops at that step's end, as a preempted one."""
    import bench.jobs
    from bench.cli import main

    train_run = bench.jobs.train_run
    stamps = Path(os.environ[STAMPS_ENV])
    stop_at = int(os.environ.get(STOP_AT_ENV, "0"))

    def timed_train_run(run, preset, datasets, on_step=None, *args: Any, **kwargs: Any) -> Any:
        def step(done: int, total: int) -> None:
            with open(stamps, "a") as f:
                f.write(f"{time.perf_counter()}\n")
            if done == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            if on_step is not None:
                on_step(done, total)

        return train_run(run, preset, datasets, step, *args, **kwargs)

    bench.jobs.train_run = timed_train_run
    return main(argv)


# --- 3. the rehearsal ------------------------------------------------------------------------


@dataclass
class Settings:
    preset: str
    device: str
    amp: str
    batch_size: int | None  # None: the preset's
    train_clips: int
    eval_clips: int
    methods: list[str]
    resume_method: str
    weights: list[str]
    extra: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        towers = {role: "random" for role in ("audio", "visual", "shared")}
        towers |= dict(w.split("=", 1) for w in self.weights)
        sets = [f"towers.{role}={source}" for role, source in towers.items()]
        sets += ["train.epochs=1", "measure.enabled=false", f"train.amp={self.amp}"]
        sets += [f"train.batch_size={self.batch_size}"] if self.batch_size else []
        return [*sets, *self.extra]


def run_argv(s: Settings, method: str, tree: Path, out: Path) -> list[str]:
    argv = ["run", "--methods", method, "--tasks", "ave", "--preset", s.preset, "--device", s.device]
    argv += ["--data", f"ave={tree}", "--out", str(out), "--keep-checkpoints", "--workers", "1"]
    for o in s.overrides():
        argv += ["--set", o]
    return argv


def record_of(out: Path, method: str) -> dict[str, Any] | None:
    from bench.results import ResultsStore

    found = [r for r in ResultsStore(out).load().records if r.get("method") == method]
    return found[-1] if found else None


def checkpoint_bytes(out: Path, record: dict[str, Any] | None) -> int | None:
    path = out / "checkpoints" / str(record["key"]) / "checkpoint.pt" if record else None
    return path.stat().st_size if path is not None and path.is_file() else None


SAME = ("metrics", "val_history", "best_epoch")


def prepared_tree(s: Settings, work: Path, say=print) -> Path:
    """work/prepared: the clips of `s` written under work/raw and prepared, a worker per core (at most 8)."""
    from bench.device import usable_cores

    src, tree, logs = work / "raw", work / "prepared", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    splits = {"train": s.train_clips, "val": s.eval_clips, "test": s.eval_clips}
    write_raw_ave(src, splits)
    workers = str(min(8, usable_cores()))
    prep = bench_run(["data", "prepare", "ave", "--src", str(src), "--dst", str(tree), "--workers", workers],
                     logs / "prepare.log")  # fmt: skip
    if prep.exit_code != 0:
        raise SystemExit(f"bench data prepare failed ({prep.exit_code}): see {logs / 'prepare.log'}")
    say(f"{sum(splits.values())} clips written and prepared in {time.perf_counter() - started:.0f} s: {tree}")
    return tree


def rehearse(s: Settings, work: Path, write: Callable[[dict[str, Any]], None], say=print) -> dict[str, Any]:
    """Every method in turn, the stopped and resumed run right after its uninterrupted one;
    `write` gets the result so far after each, so that a rehearsal cut short leaves a report."""
    started = time.perf_counter()
    tree, runs, logs = prepared_tree(s, work, say), work / "runs", work / "logs"
    result: dict[str, Any] = {"methods": {}, "resume": None, "total_s": 0.0, "finished": False}
    for method in s.methods:
        run = bench_run(run_argv(s, method, tree, runs), logs / f"{method}.log")
        record = record_of(runs, method)
        ok = run.exit_code == 0 and record is not None and record["status"] == "ok"
        result["methods"][method] = figures = {
            "status": record["status"] if record else f"exit {run.exit_code}",
            "step_s": run.step_s,
            "steps": len(run.stamps),
            "peak_rss_bytes": run.peak_rss_bytes,
            "data_wait_fraction": record["efficiency"].get("data_wait_fraction") if ok else None,
            "loader_workers": record["efficiency"].get("loader_workers") if ok else None,
            "checkpoint_bytes": checkpoint_bytes(runs, record),
            "wall_s": run.wall_s,
            "load_average": os.getloadavg()[1],  # the machine's 5-minute load as the run ended: shared or not
        }
        say(f"{method}: {json.dumps(figures)}")
        if method == s.resume_method:
            result["resume"] = resume_check(s, tree, runs, work / "resumed", logs)
            figures["resumed_equal"] = result["resume"]["equal"]
            say(f"resume of {method}: {json.dumps(result['resume'])}")
        result["total_s"] = time.perf_counter() - started
        write(result)
    result["finished"] = True
    write(result)
    return result


def resume_check(s: Settings, tree: Path, runs: Path, out: Path, logs: Path) -> dict[str, Any]:
    """Run `resume_method` again in a fresh folder, SIGTERM it during its first training step,
    rerun its command, and compare the record with the uninterrupted one's."""
    argv = run_argv(s, s.resume_method, tree, out)
    stopped = bench_run(argv, logs / "stopped.log", stop_at_step=1)
    saved = out / "checkpoints"
    step = None
    for path in saved.glob("*/checkpoint.pt"):
        import torch

        step = int(torch.load(path, map_location="cpu", weights_only=True)["train"]["step"])
    finished = bench_run(argv, logs / "resumed.log")
    again, first = record_of(out, s.resume_method), record_of(runs, s.resume_method)
    differing = [k for k in SAME if first is None or again is None or first.get(k) != again.get(k)]
    return {
        "stopped_exit_code": stopped.exit_code,
        "checkpoint_step": step,
        "steps_per_epoch": s.train_clips // (s.batch_size or 1),
        "resumed_exit_code": finished.exit_code,
        "resumed_steps": len(finished.stamps),
        "equal": bool(first and again and not differing and stopped.exit_code == 128 + signal.SIGTERM),
        "differing": differing,
    }


# --- the report ------------------------------------------------------------------------------


def fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    s, env, resume = report["settings"], report["machine"], report["resume"]
    lines = [
        f"# Rehearsal: every method on the {s['preset']} preset, one epoch of prepared AVE clips",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Machine: {env['cores']} cores ({env['cpu']}), {env['memory_gib']:.0f} GiB; device {s['device']}, "
        f"amp {s['amp']}; git {report['git']}. Towers: {', '.join(Settings(**s).overrides()[:3])}.",
        f"Data: {s['train_clips']} train, {s['eval_clips']} val and {s['eval_clips']} test clips of 10 s "
        f"(64 px, {CLIP_FPS} fps, a tone), written by the script and prepared by `bench data prepare ave` "
        "(224 px frames, 32 kHz audio); read at T = 10 segments (real AVE fixes it), batch "
        f"{s['batch_size'] or 'the preset'}. Total {report['total_s'] / 60:.1f} min"
        + ("." if report["finished"] else ", and the rehearsal is not finished: this report is partial."),
        "",
        "| method | status | steps | step (s) | peak RSS (GiB) | data_wait_fraction | checkpoint (bytes) "
        "| resumed run equal | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in report["methods"].items():
        equal = {True: "yes", False: "**no**"}.get(m.get("resumed_equal"), "")
        lines.append(
            f"| {method} | {m.get('status', '-')} | {m.get('steps', '-')} | {fmt(m.get('step_s'))} "
            f"| {fmt(m.get('peak_rss_bytes'), 2**30)} | {fmt(m.get('data_wait_fraction'), digits=3)} "
            f"| {m.get('checkpoint_bytes') or '-'} | {equal} | {fmt(m.get('load_average'), digits=1)} |"
        )
    for method in s["methods"]:
        if method not in report["methods"]:
            lines.append(f"| {method} | not run | | | | | | | |")
    lines += [
        "",
        "Step: median time between consecutive training steps. Peak RSS: the `bench run` process's "
        "(its loader workers not included). Checkpoint: OUT/checkpoints/<run key>/checkpoint.pt, kept "
        "with `--keep-checkpoints`; it holds trainable state only, never the towers. Load: the machine's "
        "5-minute load average as the run ended (above the core count, the runs shared the cores).",
        "",
    ]
    if resume is None:
        return "\n".join([*lines, f"Resume: {s['resume_method']} not stopped and resumed yet.", ""])
    lines += [
        f"Resume: {s['resume_method']} was sent SIGTERM during training step 1 of {resume['steps_per_epoch']}; "
        f"it exited {resume['stopped_exit_code']} with its checkpoint at step {resume['checkpoint_step']}; the "
        f"same command rerun exited {resume['resumed_exit_code']} after {resume['resumed_steps']} more step(s). "
        f"Record equal to the uninterrupted run's ({', '.join(SAME)}): "
        f"{'yes' if resume['equal'] else 'NO, differing: ' + ', '.join(resume['differing'])}.",
        "",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from bench.device import usable_cores

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": usable_cores(), "cpu": platform.processor() or platform.machine(), "memory_gib": memory}


def git_sha() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=Path, default=None, help="folder for README.md and rehearsal.json")
    p.add_argument("--prepare-only", action="store_true", help="write and prepare the clips under --work, then stop")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (clips, tree, runs); default: a temp dir")
    p.add_argument("--preset", default="paper")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all eight)")
    p.add_argument("--resume-method", default="mettle", help="the method stopped and resumed (default mettle)")
    p.add_argument("--weights", action="append", default=[], metavar="ROLE=SOURCE", help="towers.ROLE (default random)")
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16 autocast, --steps steps at the preset's batch")
    p.add_argument("--device", default=None, help="default: cpu, or cuda with --gpu")
    p.add_argument("--amp", default=None, choices=["off", "bf16"], help="default: off, or bf16 with --gpu")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (CPU: 2; --gpu: 50)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 1 on CPU, the preset's with --gpu")
    p.add_argument("--eval-clips", type=int, default=1, help="val and test clips each (default 1)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Settings:
    from bench.config import TrainConfig, build_section
    from bench.presets import get_preset

    batch = args.batch_size or (None if args.gpu else 1)
    per_step = batch or build_section(TrainConfig, "train", get_preset(args.preset).train, []).batch_size
    steps = args.steps or (50 if args.gpu else 2)
    if steps < 2:
        raise SystemExit("--steps must be >= 2: the resumed run is stopped during its first step")
    return Settings(
        preset=args.preset,
        device=args.device or ("cuda" if args.gpu else "cpu"),
        amp=args.amp or ("bf16" if args.gpu else "off"),
        batch_size=batch,
        train_clips=steps * per_step,
        eval_clips=args.eval_clips,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        resume_method=args.resume_method,
        weights=args.weights,
        extra=args.extra,
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    sys.path.insert(0, str(REPO))
    args = parse(argv)
    s = settings(args)
    if args.prepare_only:
        if args.work is None:
            raise SystemExit("--prepare-only needs --work: the folder the prepared tree is left in")
        prepared_tree(s, args.work)
        return 0
    if args.report is None:
        raise SystemExit("--report is required: the folder the report is written to")
    command = shlex.join(["python", "scripts/rehearsal.py", *argv])
    header = {"command": command, "git": git_sha(), "machine": machine(), "settings": asdict(s)}

    def write(result: dict[str, Any]) -> None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "rehearsal.json").write_text(json.dumps(header | result, indent=2) + "\n")
        (args.report / "README.md").write_text(markdown(header | result))

    with tempfile.TemporaryDirectory(prefix="rehearsal-") as scratch:
        result = rehearse(s, args.work or Path(scratch), write, say=lambda line: print(line, flush=True))
    print(f"report: {args.report / 'README.md'}")
    failed = [m for m, r in result["methods"].items() if r.get("status") != "ok"]
    return 1 if failed or not (result["resume"] and result["resume"]["equal"]) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
