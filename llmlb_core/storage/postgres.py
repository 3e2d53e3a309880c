"""PostgreSQL persistence: the same :class:`~llmlb_core.storage.interfaces.Storage` as the SQLite
store (statements, rows and sealed endpoint keys shared in :mod:`llmlb_core.storage.sql`), for a
router whose durable state lives in a database server (``database_url = "postgresql://..."``).

Synchronous like the SQLite store: writes are rare (admin actions, node registration) and the
registries read in-memory copies on the hot paths, so one connection, guarded by a lock, in
autocommit (each statement its own transaction; :meth:`PostgresStore._run_many` one explicit
transaction) is enough. The schema is versioned (:mod:`llmlb_core.storage.migrations`) and
brought up to date at open, under an advisory lock.

A connection that broke (the server restarted) is opened again, and the statement run once more
on it; while the server is down a call raises :class:`DatabaseError`. The URL is
only ever shown without its password (:func:`~llmlb_core.storage.urls.redact_url`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import psycopg

from llmlb_core.config.settings import SettingsError
from llmlb_core.server.errors import OpenAIError
from llmlb_core.storage.migrations import SchemaTooNew, migrate
from llmlb_core.storage.sql import SqlStore
from llmlb_core.storage.urls import redact_url

if TYPE_CHECKING:
    from llmlb_core.storage.interfaces import Storage

log = logging.getLogger("llmlb.storage")

# A request waits at most this long for the database to answer a new connection.
CONNECT_TIMEOUT_S = 5
T = TypeVar("T")
# Now, in seconds since the epoch, by the database's clock (one clock for every router).
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"


class DatabaseError(SettingsError):
    """The database cannot be reached or used (one line for the operator, password redacted)."""


class DatabaseUnavailable(OpenAIError):
    """A request that needs the database while it is down: 503, to try again (the store
    reconnects by itself when the database is back)."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "The router's database is unavailable; try again shortly",
            type="server_error",
            code="database_unavailable",
            headers={"retry-after": "1"},
        )


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection; a :class:`DatabaseError` naming the URL (redacted) when refused."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}") from None


class PostgresStore(SqlStore):
    """The router's durable state in a PostgreSQL database (schema migrated on open)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.location = redact_url(url)
        self._lock = threading.Lock()
        self._conn = connect(url)
        self.endpoint_box = None
        self._warned_plaintext = False
        try:
            migrate(self._conn)
        except SchemaTooNew as exc:
            self._conn.close()
            raise DatabaseError(f"{self.location}: {exc}") from None
        except psycopg.Error as exc:
            self._conn.close()
            raise DatabaseError(f"cannot prepare the schema in {self.location}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _call(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` on the connection; once more on a new one when it broke (the server restarted:
        a statement on a dead connection never reached it). A database still down: a 503
        :class:`DatabaseUnavailable` for the request that needed it (never a 500), one warning
        line, and the next call tries again."""
        with self._lock:
            try:
                return self._work(work)
            except (DatabaseError, psycopg.OperationalError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                password = urlsplit(self._url).password
                if password:
                    reason = reason.replace(password, "***")
                log.warning("database %s unavailable: %s", self.location, reason)
                raise DatabaseUnavailable() from None

    def _work(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        if self._conn.closed or self._conn.broken:
            self._conn = connect(self._url)
        try:
            return work(self._conn)
        except psycopg.OperationalError:
            if not self._conn.broken:
                raise
        self._conn = connect(self._url)
        return work(self._conn)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")  # our statements hold no literal '?'

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._call(lambda conn: conn.execute(self._sql(sql), args).fetchall())

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return self._call(lambda conn: conn.execute(self._sql(sql), args).rowcount)

    # --- shared_blobs (llmlb_core.storage.blobs): lifetimes by the database's clock -----------
    def blob_put(self, namespace: str, key: str, data: bytes, ttl_s: float) -> None:
        self._run(
            "INSERT INTO shared_blobs (namespace, key, value, expires_at)"
            f" VALUES (?, ?, ?, {_NOW} + ?) ON CONFLICT (namespace, key) DO UPDATE"
            " SET value = excluded.value, expires_at = excluded.expires_at",
            (namespace, key, data, float(ttl_s)),
        )

    def blob_get(self, namespace: str, key: str) -> bytes | None:
        rows = self._rows(
            f"SELECT value FROM shared_blobs WHERE namespace = ? AND key = ? AND expires_at > {_NOW}",
            (namespace, key),
        )
        return None if not rows else bytes(rows[0][0])

    def blob_touch(self, namespace: str, key: str, ttl_s: float) -> bool:
        sql = (
            f"UPDATE shared_blobs SET expires_at = {_NOW} + ?"
            f" WHERE namespace = ? AND key = ? AND expires_at > {_NOW}"
        )
        return self._run(sql, (float(ttl_s), namespace, key)) > 0

    def blob_delete(self, namespace: str, key: str) -> bool:
        return self._run("DELETE FROM shared_blobs WHERE namespace = ? AND key = ?", (namespace, key)) > 0

    def blob_purge(self) -> int:
        """Delete every expired value; how many."""
        return self._run(f"DELETE FROM shared_blobs WHERE expires_at <= {_NOW}")

    def _run_many(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        def many(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._sql(sql), args)

        self._call(many)


if TYPE_CHECKING:
    _implements_storage: type[Storage] = PostgresStore  # mypy: every Storage method
