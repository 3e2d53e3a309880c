"""The store's behaviour, the same on both backends: SQLite (a file) and PostgreSQL (a real,
private server: tests/support/postgres.py). Then what only PostgreSQL has: versioned schema
migrations under an advisory lock, and URLs shown without their password."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from llmlb_core.config.settings import SettingsError
from llmlb_core.storage.backends import open_url
from llmlb_core.storage.interfaces import KeyRow, ModelRow
from llmlb_core.storage.migrations import LATEST, migrate, schema_version
from llmlb_core.storage.postgres import PostgresStore
from llmlb_core.storage.secretbox import SecretKeyError, protect_endpoint_keys
from llmlb_core.storage.sql import SEALED_FIELD, SqlStore
from llmlb_core.storage.urls import parse_database_url, redact_url
from tests.support.postgres import PostgresServer

SECRET = "a-secret-of-more-than-16-chars"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_url(store_url, tmp_path)
    yield opened
    opened.close()


def test_keys(store: SqlStore) -> None:
    now = time.time()
    store.add_key(KeyRow(id="k1", name="one", key_hash="h1", prefix="sk-1", scopes=["api"], created_at=now))
    store.add_key(
        KeyRow(
            id="k2", name="node", key_hash="h2", prefix="sk-2", scopes=["node"], created_at=now + 1,
            expires_at=now + 60, node_id="n1",
        )
    )  # fmt: skip
    assert store.count_keys() == 2
    assert store.revoke_key("k1") and not store.revoke_key("k1") and not store.revoke_key("nope")
    one, two = store.list_keys()
    assert (one.id, one.scopes, one.created_at) == ("k1", ["api"], now)  # full float precision
    assert one.revoked_at is not None and two.revoked_at is None
    assert (two.expires_at, two.node_id) == (now + 60, "n1")


def test_nodes(store: SqlStore) -> None:
    store.upsert_node("a", {"name": "a", "models": [1]}, 10.0, owner_key_id="k1")
    store.upsert_node("b", {"name": "b"}, 20.0)
    store.mark_node_deregistered("a", 30.0)
    rows = {r.id: r for r in store.list_nodes()}
    assert rows["a"].deregistered_at == 30.0 and rows["a"].owner_key_id == "k1"
    assert rows["a"].record == {"name": "a", "models": [1]}
    store.upsert_node("a", {"name": "a2"}, 40.0, owner_key_id="k1")  # back: listed again
    a = next(r for r in store.list_nodes() if r.id == "a")
    assert (a.deregistered_at, a.record, a.registered_at, a.last_seen_at) == (
        None,
        {"name": "a2"},
        40.0,
        40.0,
    )
    assert [r.id for r in store.list_nodes()] == ["b", "a"]  # oldest registration first
    assert store.delete_node("b") and not store.delete_node("b")


def test_models(store: SqlStore) -> None:
    store.upsert_model(ModelRow(id="m", capabilities=["chat"], defaults={"t": 1}, created_at=5.0))
    store.upsert_model(ModelRow(id="m", capabilities=["image"], defaults={}, description="d", created_at=9.0))
    (row,) = store.list_models()
    assert (row.capabilities, row.defaults, row.description, row.created_at) == (["image"], {}, "d", 5.0)
    assert store.delete_model("m") and not store.delete_model("m") and store.list_models() == []


def test_endpoint_keys_sealed_at_rest(store: SqlStore, store_url: str, tmp_path: Path) -> None:
    store.upsert_endpoint("up", {"base_url": "http://x", "api_key": "sk-upstream"}, 1.0)
    store.upsert_endpoint("open", {"base_url": "http://y"}, 2.0)
    assert store.count_endpoint_keys(sealed=False) == 1
    protect_endpoint_keys(store, SECRET)  # the plain key is sealed now
    assert (store.count_endpoint_keys(sealed=False), store.count_endpoint_keys(sealed=True)) == (0, 1)
    raw = dict((name, record) for name, record, _ in store._endpoint_rows())
    assert "sk-upstream" not in str(raw) and SEALED_FIELD in str(raw["up"])
    assert store.list_endpoints()[0] == ("up", {"base_url": "http://x", "api_key": "sk-upstream"}, 1.0)
    store.close()  # closing twice (the fixture) is harmless
    again = open_url(store_url, tmp_path)  # reopened: the same secret opens it, no other does
    try:
        with pytest.raises(SecretKeyError, match="encrypted"):
            protect_endpoint_keys(again, None)
        with pytest.raises(SecretKeyError, match="not the one"):
            protect_endpoint_keys(again, "another-secret-of-16-chars")
        protect_endpoint_keys(again, SECRET)
        assert again.list_endpoints()[0][1]["api_key"] == "sk-upstream"
        assert again.delete_endpoint("up") and not again.delete_endpoint("up")
    finally:
        again.close()


def test_meta(store: SqlStore) -> None:
    assert store.get_meta("x") is None
    store.set_meta("x", "1")
    store.set_meta("x", "2")
    assert store.get_meta("x") == "2"
    assert store.add_meta("x", "3") == "2"  # kept: the first one written wins
    assert store.add_meta("y", "4") == "4"


def test_routers_starting_together_agree_on_one_secret_salt(store_url: str, tmp_path: Path) -> None:
    """Two routers opening one new database at once: whichever writes the salt first, both end
    with boxes that open each other's seals (one sealed a node credential, the other opens it)."""
    first, second = open_url(store_url, tmp_path), open_url(store_url, tmp_path)
    try:
        first.add_meta("secret_salt", second.get_meta("secret_salt") or "c2FsdC1vZi0xNi1ieXRlcw==")
        protect_endpoint_keys(second, SECRET)  # the other router has written a salt, no check yet
        protect_endpoint_keys(first, SECRET)
        assert first.endpoint_box is not None and second.endpoint_box is not None
        assert second.endpoint_box.open(first.endpoint_box.seal("node-token")) == "node-token"
        assert first.get_meta("secret_salt") == "c2FsdC1vZi0xNi1ieXRlcw=="
    finally:
        first.close()
        second.close()


# --- PostgreSQL only: migrations, URLs ---------------------------------------------------------
def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrations_are_versioned_and_idempotent(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn) == list(range(1, LATEST + 1))
        assert migrate(conn) == [] and schema_version(conn) == LATEST
    PostgresStore(postgres_url).close()  # a router starting on it: nothing to do
    assert _tables(postgres_url) == {
        "schema_version",
        "api_keys",
        "nodes",
        "models",
        "endpoints",
        "store_meta",
        "shared_blobs",
    }


def test_concurrent_migrations_end_with_one_schema(postgres_url: str) -> None:
    """Eight routers starting at once: the advisory lock lets one migrate, the others wait and
    find nothing to do."""
    barrier = threading.Barrier(8)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                barrier.wait()
                applied.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(applied) == [[] for _ in range(7)] + [list(range(1, LATEST + 1))]
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, LATEST + 1)]


def test_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (LATEST + 1,))
    with pytest.raises(SettingsError, match="newer than this llmlb knows"):
        PostgresStore(postgres_url)


def test_urls_are_shown_without_password(postgres: PostgresServer, tmp_path: Path) -> None:
    assert (
        redact_url("postgresql://u:s3cret@h:5/db?sslmode=require")
        == "postgresql://u:***@h:5/db?sslmode=require"
    )
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    url = postgres.url(postgres.database().rsplit("/", 1)[1], password="s3cret")
    store = PostgresStore(url)  # trust authentication: the password is not checked
    try:
        assert "s3cret" not in store.location and "***" in store.location
    finally:
        store.close()
    refused = f"postgresql://postgres:s3cret@127.0.0.1:{postgres.port}/no_such_db"
    with pytest.raises(SettingsError) as caught:
        PostgresStore(refused)
    assert "s3cret" not in str(caught.value) and "no_such_db" in str(caught.value)


def test_the_store_reconnects_after_a_server_restart(postgres: PostgresServer, postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    try:
        store.set_meta("before", "1")
        postgres.restart()  # the store's connection is cut
        assert store.get_meta("before") == "1"  # reopened, the read run again
        store.set_meta("after", "2")
        assert store.get_meta("after") == "2"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "kind"),
    [(None, "sqlite"), ("", "sqlite"), ("sqlite:///x.db", "sqlite"), ("postgres://h/db", "postgresql")],
)
def test_database_url_kinds(url: str | None, kind: str, tmp_path: Path) -> None:
    assert parse_database_url(url, tmp_path).kind == kind
    assert parse_database_url(None, tmp_path).path == tmp_path / "llmlb.sqlite3"


@pytest.mark.parametrize("url", ["mysql://u:pw@h/db", "x.db", "sqlite://", "postgresql://u:pw@h:99999/db"])
def test_bad_database_url_is_one_line_without_password(url: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_database_url(url, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and ":pw@" not in message
