"""A router (``llmlb serve``, a real process) with its durable state in a real PostgreSQL
(tests/support/postgres.py): keys, a node, a model and an endpoint whose key is sealed at rest
survive a restart on the same database, even with a fresh data_dir; the password of the URL is
never shown; a bad URL is one line and exit 2. And ``llmlb db copy``: a populated SQLite install
copied into PostgreSQL, where a router accepts the same API keys and opens the same sealed
endpoint key with the same secret_key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from llmlb_core.storage.migrations import LATEST
from tests.support.cli_runs import run_cli
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, router_proc

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "router-secret-for-endpoint-keys"
PASSWORD = "pg-s3cret-pw"
UPSTREAM_KEY = "sk-upstream-key-0123456789"
COPIED_KEY = "sk-upstream-copied-0123456789"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start(tmp: Path, data_dir: Path, url: str | None, procs: list[Proc]) -> Proc:
    """A router on ``url`` (None: SQLite in ``data_dir``), endpoint keys sealed with SECRET."""
    env = {"LLMLB_SECRET_KEY": SECRET} | ({"LLMLB_DATABASE_URL": url} if url else {})
    router = router_proc(tmp, data_dir=data_dir, env=env)
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

    # In the database: the endpoint key sealed, never in clear; the schema at its last version.
    with psycopg.connect(postgres.url(database)) as conn:
        (record,) = conn.execute("SELECT record FROM endpoints WHERE name = 'up'").fetchone() or ("",)
        assert UPSTREAM_KEY not in record and "api_key_sealed" in record
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, LATEST + 1)]
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


# --- llmlb db copy -------------------------------------------------------------------------
def test_a_sqlite_install_copied_into_postgresql_serves_the_same_keys(
    postgres: PostgresServer, postgres_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "sqlite-install"
    old = start(tmp_path, data_dir, None, procs)
    api_key = create_key(old.url, ["api"], name="client")
    revoked = create_key(old.url, ["api"], name="gone")
    gone_id = next(k["id"] for k in admin_get(old.url, "/v0/keys")["data"] if k["name"] == "gone")
    assert httpx.delete(
        f"{old.url}/v0/keys/{gone_id}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).is_success
    assert (
        post(old, "/v0/models", ADMIN_KEY, {"id": "demo", "capabilities": ["image_generation"]}).status_code
        == 201
    )
    endpoint = {"name": "up", "url": "http://127.0.0.1:9", "api_key": COPIED_KEY}
    assert post(old, "/v0/endpoints", ADMIN_KEY, endpoint).status_code == 201
    old.stop()

    copied = run_cli("db", "copy", "--from", str(data_dir), "--to", postgres_url, cwd=tmp_path)
    assert copied.code == 0, copied.err
    assert copied.out.startswith("copied 3 keys, 0 nodes, 1 models, 1 endpoints, 2 meta"), copied.out
    assert "1 endpoint key(s) sealed" in copied.out
    with psycopg.connect(postgres_url) as conn:
        (record,) = conn.execute("SELECT record FROM endpoints").fetchone() or ("",)
    assert COPIED_KEY not in record  # still sealed

    again = run_cli(
        "db", "copy", "--from", str(data_dir / "llmlb.sqlite3"), "--to", postgres_url, cwd=tmp_path
    )
    assert again.code == 2 and "not empty" in again.err and "--force" in again.err
    forced = run_cli(
        "db", "copy", "--from", f"sqlite:///{data_dir / 'llmlb.sqlite3'}", "--to", postgres_url, "--force",
        cwd=tmp_path,
    )  # fmt: skip
    assert forced.code == 0 and forced.out.startswith("copied 3 keys"), forced.err

    new = start(tmp_path, tmp_path / "pg-data", postgres_url, procs)
    headers = {"authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{new.url}/v1/models", headers=headers, timeout=10).status_code == 200
    refused = httpx.get(f"{new.url}/v1/models", headers={"authorization": f"Bearer {revoked}"}, timeout=10)
    assert refused.status_code == 401
    assert [e["name"] for e in admin_get(new.url, "/v0/endpoints")["data"]] == ["up"]
    assert "demo" in {m["id"] for m in admin_get(new.url, "/v0/models")["data"]}
    assert "encrypted" not in new.log() and "Traceback" not in new.log()


def test_db_copy_refusals_are_one_line(postgres: PostgresServer, tmp_path: Path) -> None:
    missing = run_cli("db", "copy", "--from", str(tmp_path / "none.sqlite3"), "--to", "x.db", cwd=tmp_path)
    assert missing.code == 2 and missing.err_lines == [
        f"llmlb: no database at {tmp_path / 'none.sqlite3'} (--from)"
    ]
    same = tmp_path / "a.sqlite3"
    assert run_cli("db", "copy", "--from", "/dev/null", "--to", str(same), cwd=tmp_path).code != 0
    same.touch()
    itself = run_cli("db", "copy", "--from", str(same), "--to", f"sqlite:///{same}", cwd=tmp_path)
    assert itself.code == 2 and "the same database" in itself.err
    gone = f"postgresql://postgres:pw-9@127.0.0.1:{postgres.port}/absent"
    unreachable = run_cli("db", "copy", "--from", str(same), "--to", gone, cwd=tmp_path)
    assert unreachable.code == 2 and "pw-9" not in unreachable.err and "Traceback" not in unreachable.err
    assert unreachable.err_lines[-1].startswith(
        "llmlb: cannot connect to PostgreSQL at postgresql://postgres:***@"
    )


def test_while_postgresql_is_down_a_write_is_a_503_and_the_router_recovers(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A private server of its own (the worker's shared one keeps running for other tests)."""
    with postgres_server() as pg:
        router = start(tmp_path, tmp_path / "data", pg.database(), procs)
        api_key = create_key(router.url, ["api"], name="before")
        pg.down()
        try:
            refused = post(router, "/v0/keys", ADMIN_KEY, {"name": "during", "scopes": ["api"]})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "database_unavailable"
            assert refused.headers["retry-after"] == "1"
            # What the router holds in memory still serves: the key made before is accepted.
            listed = httpx.get(f"{router.url}/v1/models", headers={"authorization": f"Bearer {api_key}"})
            assert listed.status_code == 200
        finally:
            pg.up()
        made = post(router, "/v0/keys", ADMIN_KEY, {"name": "after", "scopes": ["api"]})
        assert made.status_code == 201, made.text
        keys = admin_get(router.url, "/v0/keys")["data"]
        assert {"before", "after"} <= {k["name"] for k in keys}
        log = router.log()
        assert "Traceback" not in log
        assert "unavailable" in log  # one warning line said what happened
