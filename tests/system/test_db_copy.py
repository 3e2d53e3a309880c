"""``llmlb db copy``: a populated SQLite install (made by a real router) copied into a real
PostgreSQL (tests/support/postgres.py); a router on the PostgreSQL URL then accepts the same API
keys and opens the same sealed endpoint key with the same secret_key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.cli_runs import run_cli
from tests.support.postgres import PostgresServer
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, router_proc

SECRET = "copy-secret-for-endpoint-keys"
UPSTREAM_KEY = "sk-upstream-copied-0123456789"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start(tmp: Path, data_dir: Path, procs: list[Proc], **env: str) -> Proc:
    router = router_proc(tmp, data_dir=data_dir, env={"LLMLB_SECRET_KEY": SECRET, **env})
    procs.append(router)
    return router.start().wait_healthy()


def admin_post(router: Proc, path: str, body: object) -> int:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.post(f"{router.url}{path}", json=body, headers=headers, timeout=10).status_code


def test_a_sqlite_install_copied_into_postgresql_serves_the_same_keys(
    postgres: PostgresServer, postgres_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "sqlite-install"
    old = start(tmp_path, data_dir, procs)
    api_key = create_key(old.url, ["api"], name="client")
    revoked = create_key(old.url, ["api"], name="gone")
    gone_id = next(k["id"] for k in admin_get(old.url, "/v0/keys")["data"] if k["name"] == "gone")
    assert httpx.delete(
        f"{old.url}/v0/keys/{gone_id}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).is_success
    assert admin_post(old, "/v0/models", {"id": "demo", "capabilities": ["image_generation"]}) == 201
    endpoint = {"name": "up", "url": "http://127.0.0.1:9", "api_key": UPSTREAM_KEY}
    assert admin_post(old, "/v0/endpoints", endpoint) == 201
    old.stop()

    copied = run_cli("db", "copy", "--from", str(data_dir), "--to", postgres_url, cwd=tmp_path)
    assert copied.code == 0, copied.err
    assert copied.out.startswith("copied 3 keys, 0 nodes, 1 models, 1 endpoints, 2 meta"), copied.out
    assert "1 endpoint key(s) sealed" in copied.out
    with psycopg.connect(postgres_url) as conn:
        (record,) = conn.execute("SELECT record FROM endpoints").fetchone() or ("",)
    assert UPSTREAM_KEY not in record  # still sealed

    again = run_cli(
        "db", "copy", "--from", str(data_dir / "llmlb.sqlite3"), "--to", postgres_url, cwd=tmp_path
    )
    assert again.code == 2 and "not empty" in again.err and "--force" in again.err
    forced = run_cli(
        "db", "copy", "--from", f"sqlite:///{data_dir / 'llmlb.sqlite3'}", "--to", postgres_url, "--force",
        cwd=tmp_path,
    )  # fmt: skip
    assert forced.code == 0 and forced.out.startswith("copied 3 keys"), forced.err

    new = start(tmp_path, tmp_path / "pg-data", procs, LLMLB_DATABASE_URL=postgres_url)
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
