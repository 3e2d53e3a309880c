"""``python -m bench.replicas`` end to end in a tiny mode: real routers (one on SQLite, two on a
private PostgreSQL + Redis), the stub nodes, every scenario measured and the JSON written, with
the round trips it counts (a request through the shared routers: one CLAIM script before it is
sent, one REPORT after the answer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._common import REPO
from tests.support.postgres import require_pg_bin
from tests.support.redis import require_redis_bin


def test_bench_replicas_runs_end_to_end(tmp_path: Path) -> None:
    require_pg_bin()
    require_redis_bin()
    out = tmp_path / "replicas.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.replicas", "--requests", "4", "--rounds", "1", "--warmup", "2",
            "--monitor-requests", "4", "--json", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "target (shared state adds <= 0.15 ms router CPU per chat request;" in done.stdout
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"chat c=1", "chat c=16", "image 1.5 MB c=1"}
    for name, paths in data["results"].items():
        assert set(paths) == {"direct", "sqlite", "shared", "shared-1", "sqlite-2"}
        for path in paths.values():
            assert path["requests"] == (16 if name == "chat c=16" else 4)
            assert path["p50_ms"] > 0
        assert paths["shared"]["router_cpu_ms_per_req"] > 0
        assert paths["shared"]["redis_commands_per_req"] > 0
    shared = data["results"]["chat c=1"]["shared"]
    # One claim per request; a release rides with the next claim, or goes alone when none comes.
    assert 1.0 <= shared["redis_sent_EVALSHA_per_req"] <= 2.0
    assert data["results"]["image 1.5 MB c=1"]["direct"]["body_bytes"] > 1_000_000
