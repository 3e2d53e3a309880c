"""stable-diffusion.cpp worker processes as a test sees them from outside (psutil)."""

from __future__ import annotations

import psutil

from llmlb_node.stable_diffusion.engine.worker_runner import WORKER_MODULE


def worker_pids(parent: int) -> list[int]:
    """The live worker processes that process ``parent`` started."""
    found = []
    try:
        children = psutil.Process(parent).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if WORKER_MODULE in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def reaped(pid: int) -> bool:
    """The process has ended and its parent collected its exit status (no zombie is left)."""
    return not psutil.pid_exists(pid)


def ended(pid: int) -> bool:
    """The process has ended (an orphan's zombie counts: its new parent, not the node, reaps it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
