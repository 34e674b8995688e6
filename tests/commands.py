"""`python -m bench ...` in a process of its own, for the tests that kill or signal a command.

It is forked from bench's forkserver, as bench forks its own workers: torch and timm are imported
once per test process, where a fresh interpreter would import them again for each command
(5-7 CPU-s). The command runs as `python -m bench` runs it (bench.forkserver.same_command), with its
stdout discarded and its stderr in a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from bench.device import usable_cores
from bench.forkserver import context, same_command


class BenchProcess:
    """The part of subprocess.Popen these tests use: pid, poll, wait, send_signal, kill."""

    def __init__(self, argv: list[str], stderr: Path, cwd: Path) -> None:
        self.stderr_path = stderr
        self.process = context().Process(target=_command, args=(argv, str(stderr), str(cwd)))
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"bench (pid {self.pid})", timeout or 0)
        return self.process.exitcode

    def send_signal(self, signum: signal.Signals) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def _command(argv: list[str], stderr: str, cwd: str) -> None:
    os.chdir(cwd)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    same_command(argv, usable_cores())
