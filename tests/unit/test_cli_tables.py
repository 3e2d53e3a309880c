"""The admin commands' tables: aligned columns, local times, "in 3 days" / "5 min ago", key
statuses, and a line per running job."""

from __future__ import annotations

import re
from datetime import datetime

from llmlb_core.cli.tables import KEY_COLUMNS, job_lines, key_status, relative, table, timestamp

NOW = 1_800_000_000.0


def test_relative_times_read_as_durations_from_now() -> None:
    assert relative(NOW + 3 * 86400, now=NOW) == "in 3 days"
    assert relative(NOW - 300, now=NOW) == "5 min ago"
    assert relative(NOW - 40, now=NOW) == "40 s ago"
    assert relative(NOW + 5 * 3600, now=NOW) == "in 5 h"
    assert relative(NOW + 0.2, now=NOW) == "now"
    assert relative(None, now=NOW, never="never") == "never"
    assert timestamp(NOW) == datetime.fromtimestamp(NOW).strftime("%Y-%m-%d %H:%M")
    assert timestamp(None) == "-"


def test_a_table_aligns_its_columns_and_shows_empty_cells_as_dashes() -> None:
    rows = [{"a": "x", "b": "long value"}, {"a": "longer", "b": ""}]
    text = table(rows, [("a", lambda r: r["a"]), ("b", lambda r: r["b"])])
    assert text.splitlines() == ["A       B", "x       long value", "longer  -"]


def test_keys_show_their_status_and_times_not_epoch_seconds() -> None:
    keys = [
        {
            "id": "k1",
            "name": "ci",
            "prefix": "sk-llmlb-ab",
            "scopes": ["api", "node"],
            "node_id": None,
            "created_at": NOW - 60,
            "expires_at": None,
            "revoked": False,
        },
        {
            "id": "k2",
            "name": "old",
            "prefix": "sk-llmlb-cd",
            "scopes": ["api"],
            "node_id": "gpu-1",
            "created_at": NOW - 86400,
            "expires_at": NOW - 10,
            "revoked": False,
        },
        {
            "id": "k3",
            "name": "gone",
            "prefix": "sk-llmlb-ef",
            "scopes": ["admin"],
            "node_id": None,
            "created_at": NOW,
            "expires_at": NOW + 10,
            "revoked": True,
        },
    ]
    assert [key_status(k, now=NOW) for k in keys] == ["active", "expired", "revoked"]
    text = table(keys, KEY_COLUMNS)
    assert "api,node" in text and "gpu-1" in text and "never" in text
    assert not re.search(r"\d{9,}", text)


def test_running_jobs_show_their_progress() -> None:
    node = {
        "name": "gpu-1",
        "jobs": [
            {"model": "sd", "step": 3, "steps": 20, "image": 1, "images": 2, "elapsed_s": 4.2},
            {"model": "flux", "step": 0, "steps": 4, "image": 1, "images": 1, "elapsed_s": 0.4},
        ],
    }
    assert job_lines(node) == [
        "  gpu-1: sd step 3/20 (image 1/2), running 4 s",
        "  gpu-1: flux step 0/4, running 0 s",
    ]
    assert job_lines({"name": "idle"}) == []
