"""``llmlb db copy --from URL --to URL``: move a router's durable state from one database to
another, e.g. an existing SQLite install into PostgreSQL.

Copied as stored: API keys (their hashes), nodes (ids still bound to their owners' keys),
models, endpoints, and ``store_meta`` (the salt and verifier of ``secret_key``), so endpoint
keys stay sealed and the same ``secret_key`` opens them on the new database. A destination
that already holds rows is refused unless ``--force``, which deletes them first. Stop the router
before copying: a router writing meanwhile may leave the copy behind.
"""

from __future__ import annotations

from pathlib import Path

import click

from llmlb_core.cli.support import CONTEXT_SETTINGS, OperatorError
from llmlb_core.storage.backends import open_target
from llmlb_core.storage.sql import SEALED_FIELD, SqlStore
from llmlb_core.storage.urls import DB_FILE, DatabaseTarget, parse_database_url

# What the summary calls each table.
KINDS = {
    "api_keys": "keys",
    "nodes": "nodes",
    "models": "models",
    "endpoints": "endpoints",
    "store_meta": "meta",
}
URL_HELP = "a SQLite file (path, data dir or sqlite:///path) or postgresql://user:password@host/db"


def _target(text: str, *, source: bool) -> DatabaseTarget:
    if not text.strip():
        raise OperatorError(f"{'--from' if source else '--to'} is empty: give {URL_HELP}")
    target = parse_database_url(text, Path.cwd(), allow_path=True)
    if target.kind == "sqlite" and target.path is not None and target.path.is_dir():
        target = DatabaseTarget("sqlite", path=target.path / DB_FILE)  # a data dir: its database
    if source and target.kind == "sqlite" and target.path is not None and not target.path.is_file():
        raise OperatorError(f"no database at {target.path} (--from)")
    return target


def _same(a: DatabaseTarget, b: DatabaseTarget) -> bool:
    if a.kind == "sqlite" and b.kind == "sqlite" and a.path is not None and b.path is not None:
        return a.path.resolve() == b.path.resolve()
    return a == b


def _summary(rows: dict[str, list[tuple[object, ...]]]) -> str:
    parts = [f"{len(rows.get(table, []))} {kind}" for table, kind in KINDS.items()]
    sealed = sum(1 for row in rows.get("endpoints", []) if SEALED_FIELD in str(row[1]))
    return ", ".join(parts) + f" ({sealed} endpoint key(s) sealed, copied sealed)"


def copy_store(
    source: SqlStore, destination: SqlStore, *, force: bool
) -> dict[str, list[tuple[object, ...]]]:
    """Copy every row of ``source`` into ``destination`` (refused when it has rows, unless ``force``)."""
    present = {table: len(found) for table, found in destination.stored_rows().items() if found}
    if present and not force:
        held = ", ".join(f"{count} {KINDS[table]}" for table, count in present.items())
        raise OperatorError(
            f"the destination {destination.location} is not empty ({held}); --force replaces its contents"
        )
    rows = source.stored_rows()
    if present:
        destination.clear_rows()
    destination.load_rows(rows)
    return rows


def db_group() -> click.Group:
    @click.group(context_settings=CONTEXT_SETTINGS, short_help="Move the router's database.")
    def db() -> None:
        """The router's durable state: keys, nodes, models, endpoints (database_url)."""

    @db.command(context_settings=CONTEXT_SETTINGS)
    @click.option("--from", "source", required=True, help=f"copy from: {URL_HELP}")
    @click.option("--to", "destination", required=True, help=f"copy into: {URL_HELP}")
    @click.option("--force", is_flag=True, help="replace what the destination holds (refused otherwise)")
    def copy(source: str, destination: str, force: bool) -> None:
        """Copy keys, nodes, models and endpoints (keys still sealed) to another database.

        E.g. an existing install into PostgreSQL, then start the router with that URL as
        database_url and the same secret_key:

            llmlb db copy --from ./llmlb-data --to postgresql://llmlb:PW@db/llmlb

        Stop the router first. The schema of a PostgreSQL destination is created or updated.
        """
        src, dst = _target(source, source=True), _target(destination, source=False)
        if _same(src, dst):
            raise OperatorError(f"--from and --to are the same database ({src.shown})")
        from_store = open_target(src)
        try:
            to_store = open_target(dst)
            try:
                rows = copy_store(from_store, to_store, force=force)
            finally:
                to_store.close()
        finally:
            from_store.close()
        click.echo(f"copied {_summary(rows)} from {src.shown} to {dst.shown}")

    return db
