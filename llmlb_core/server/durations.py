"""Durations as people read them, for messages and CLI tables."""

from __future__ import annotations


def ago(seconds: float) -> str:
    """``"12 s"``, ``"3 min"``, ``"5 h"``, ``"2 days"``: how long ago, for a message."""
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"
