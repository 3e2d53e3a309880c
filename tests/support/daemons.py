"""What the tests' private servers (tests/support/redis.py, nginx.py) share: stopping one whole
session (the server and any child it started) and reading the end of its log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def halt(popen: subprocess.Popen[bytes] | None, first: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal ``popen`` with ``first``, then SIGKILL its session after ``timeout`` seconds, and
    in any case what is left of its session (a child left behind by a parent that died)."""
    if popen is None:
        return
    if popen.poll() is None:
        popen.send_signal(first)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)


def log_tail(path: Path | None, chars: int = 4000) -> str:
    """The end of the log at ``path`` ("" when there is none yet)."""
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
