"""A router (``llmlb serve``, a real process) with its durable state in a real PostgreSQL
(tests/support/postgres.py): keys, a node, a model and an endpoint whose key is sealed at rest
survive a restart on the same database, even with a fresh data_dir; the password of the URL is
never shown; a bad URL is one line and exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.cli_runs import run_cli
from tests.support.postgres import PostgresServer
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, router_proc

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "router-secret-for-endpoint-keys"
PASSWORD = "pg-s3cret-pw"
UPSTREAM_KEY = "sk-upstream-key-0123456789"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start(tmp: Path, data_dir: Path, url: str, procs: list[Proc]) -> Proc:
    router = router_proc(tmp, data_dir=data_dir, env={"LLMLB_DATABASE_URL": url, "LLMLB_SECRET_KEY": SECRET})
    procs.append(router)
    return router.start().wait_healthy()


def post(router: Proc, path: str, key: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{router.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def test_a_router_on_postgresql_keeps_everything_across_a_restart(
    postgres: PostgresServer, tmp_path: Path, procs: list[Proc]
) -> None:
    database = postgres.database().rsplit("/", 1)[1]
    url = postgres.url(database, password=PASSWORD)  # trust authentication: not checked
    first = start(tmp_path, tmp_path / "data-1", url, procs)
    api_key = create_key(first.url, ["api"], name="client")
    node_key = create_key(first.url, ["node"], name="node")
    registration = {
        "node_id": "gpu-1",
        "name": "gpu-1",
        "base_url": "http://127.0.0.1:9",
        "token": "node-token",
        "runtime_types": ["stable_diffusion"],
        "models": [{"id": "demo", "capabilities": ["image_generation"], "runtime": "stable_diffusion"}],
        "slots": 2,
    }
    assert post(first, "/v0/nodes/register", node_key, registration).status_code == 200
    model = {"id": "demo", "capabilities": ["image_generation"], "defaults": {"steps": 3}}
    assert post(first, "/v0/models", ADMIN_KEY, model).status_code == 201
    endpoint = {"name": "up", "url": "http://127.0.0.1:9", "api_key": UPSTREAM_KEY}
    assert post(first, "/v0/endpoints", ADMIN_KEY, endpoint).status_code == 201
    first.stop()

    # In the database: the endpoint key sealed, never in clear; the schema at version 1.
    with psycopg.connect(postgres.url(database)) as conn:
        (record,) = conn.execute("SELECT record FROM endpoints WHERE name = 'up'").fetchone() or ("",)
        assert UPSTREAM_KEY not in record and "api_key_sealed" in record
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone() == (3,)  # admin, client, node

    second = start(tmp_path, tmp_path / "data-2", url, procs)  # nothing of the first's data_dir
    models = httpx.get(f"{second.url}/v1/models", headers={"authorization": f"Bearer {api_key}"}, timeout=10)
    assert models.status_code == 200
    assert [n["id"] for n in admin_get(second.url, "/v0/nodes")["data"]] == ["gpu-1"]
    stored = {m["id"]: m for m in admin_get(second.url, "/v0/models")["data"]}
    assert stored["demo"]["defaults"] == {"steps": 3}
    assert [e["name"] for e in admin_get(second.url, "/v0/endpoints")["data"]] == ["up"]
    # The node key is still bound to its node id: another node key may not take it.
    other = create_key(second.url, ["node"], name="other")
    assert post(second, "/v0/nodes/register", other, registration).status_code == 403
    assert not (tmp_path / "data-2" / "llmlb.sqlite3").exists()
    for router in (first, second):
        assert PASSWORD not in router.log() and UPSTREAM_KEY not in router.log()


def test_a_bad_or_unreachable_database_url_is_one_line_and_exit_2(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    bad = run_cli(
        "serve", "--data-dir", str(tmp_path / "d"), "--database-url", "mysql://u:pw-1@h/db", cwd=tmp_path
    )
    assert bad.code == 2 and bad.err_lines == [bad.err_lines[-1]], bad.err  # refused before anything
    assert "database_url" in bad.err and "pw-1" not in bad.err
    gone = f"postgresql://postgres:pw-2@127.0.0.1:{postgres.port}/no_such_database"
    refused = run_cli(
        "serve", "--data-dir", str(tmp_path / "d"), cwd=tmp_path, env={"LLMLB_DATABASE_URL": gone}
    )
    assert refused.code == 2 and refused.err_lines[-1].startswith("llmlb: refusing to start:"), refused.err
    assert "Traceback" not in refused.err
    assert "no_such_database" in refused.err and "pw-2" not in refused.err and "***" in refused.err
