"""How ``llmlb keys list``, ``llmlb models`` and ``llmlb nodes`` print what the admin API answers:
plain-text tables with local times and "3 min ago" / "in 2 days" instead of epoch seconds
(``--json`` prints the answer as it came)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from llmlb_core.server.durations import ago
from llmlb_core.server.log_format import escape_text

Row = Mapping[str, Any]
Column = tuple[str, Callable[[Row], str]]


def table(rows: Iterable[Row], columns: Sequence[Column]) -> str:
    """``rows`` as a left-aligned table under upper-case headers, a column per ``(header, cell)``
    (two spaces apart; the last column is not padded)."""
    cells = [[header.upper() for header, _ in columns]]
    # One line per row, and nothing a node or an earlier version stored can reach the terminal
    # as a control sequence (escape_text).
    cells += [[escape_text(" ".join(str(cell(row)).split())) or "-" for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def span(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable (``40 s``, ``12 min``, ``5 h``,
    ``3 days``), the wording of the router's own messages."""
    return ago(abs(seconds))


def relative(at: float | None, *, now: float | None = None, never: str = "-") -> str:
    """``at`` (unix seconds) from now: ``3 min ago``, ``in 2 days``; ``never`` for None."""
    if at is None:
        return never
    delta = at - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def timestamp(at: float | None) -> str:
    """``at`` (unix seconds) as a local date and time to the minute: ``2026-11-22 11:45``."""
    return "-" if at is None else datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def listed(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values) or "-"


# --- the admin API's lists -----------------------------------------------------------------
def key_status(key: Row, now: float | None = None) -> str:
    if key.get("revoked"):
        return "revoked"
    expires = key.get("expires_at")
    if expires is not None and expires <= (time.time() if now is None else now):
        return "expired"
    return "active"


KEY_COLUMNS: list[Column] = [
    ("id", lambda k: k.get("id", "")),
    ("name", lambda k: k.get("name", "")),
    ("prefix", lambda k: k.get("prefix", "")),
    ("scopes", lambda k: listed(k.get("scopes", ()))),
    ("node", lambda k: k.get("node_id") or "-"),
    ("models", lambda k: "all" if k.get("models") is None else listed(k.get("models", ()))),
    ("created", lambda k: timestamp(k.get("created_at"))),
    ("expires", lambda k: relative(k.get("expires_at"), never="never")),
    ("status", key_status),
]


def _node_slots(node: Row) -> str:
    return f"{node.get('active_jobs', 0)}/{node.get('slots', 0)}"


def _node_models(node: Row) -> str:
    return listed(m.get("id", "?") if isinstance(m, Mapping) else m for m in node.get("models", ()))


NODE_COLUMNS: list[Column] = [
    ("name", lambda n: n.get("name", "")),
    ("status", lambda n: f"{n.get('status', '?')}{' (suspect)' if n.get('suspect') else ''}"),
    ("url", lambda n: n.get("base_url", "")),
    ("busy/slots", _node_slots),
    ("queued", lambda n: str(n.get("queued_jobs", 0))),
    ("models", _node_models),
    ("loaded", lambda n: listed(n.get("loaded_models", ()))),
    ("last seen", lambda n: relative(n.get("last_seen_at"))),
    ("id", lambda n: n.get("id", "")),
]


def job_lines(node: Row) -> list[str]:
    """A line per running job of a node: ``  job: demo step 3/20 (image 1/2), 4 s``."""
    lines = []
    for job in node.get("jobs", ()):
        images = f" (image {job.get('image', 1)}/{job.get('images', 1)})" if job.get("images", 1) > 1 else ""
        lines.append(
            f"  {node.get('name', '?')}: {job.get('model', '?')} step {job.get('step', 0)}/"
            f"{job.get('steps', 0)}{images}, running {span(job.get('elapsed_s', 0.0))}"
        )
    return lines


def _model_nodes(model: Row) -> str:
    nodes = model.get("nodes", ())
    if not isinstance(nodes, list):  # a count (the /v1/models shape)
        return str(nodes)
    return listed(
        f"{n.get('node_name') or n.get('node_id', '?')}({n.get('status', '?')})"
        for n in nodes
        if isinstance(n, Mapping)
    )


MODEL_COLUMNS: list[Column] = [
    ("model", lambda m: m.get("id", "")),
    ("status", lambda m: m.get("status", "online")),
    ("capabilities", lambda m: listed(m.get("capabilities", ()))),
    ("nodes", _model_nodes),
    ("last seen", lambda m: relative(m.get("last_seen_at"))),
    ("description", lambda m: _cut(m.get("description") or "", 60)),
]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
