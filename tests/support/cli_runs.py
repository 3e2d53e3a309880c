"""``llmlb`` run as a user runs it: a real process (``python -m llmlb_core.cli``), with an
environment free of the caller's ``LLMLB_*`` variables, its exit code, stdout and stderr."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import base_env


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> CliRun:
    done = subprocess.run(
        [sys.executable, "-m", "llmlb_core.cli", *args],
        cwd=cwd,
        env=base_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliRun(done.returncode, done.stdout, done.stderr)
