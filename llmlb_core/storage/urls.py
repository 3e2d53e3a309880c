"""``database_url``: which database a router keeps its durable state in, and that URL as it may
be shown (never with its password).

- empty (the default): the SQLite file ``llmlb.sqlite3`` in ``data_dir``;
- ``sqlite:///path/to/file`` (or a plain file path, where a command takes one): that SQLite file;
- ``postgresql://user:password@host:port/dbname?sslmode=...`` (``postgres://`` too): PostgreSQL,
  any libpq URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from llmlb_core.config.settings import SettingsError

DB_FILE = "llmlb.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class DatabaseTarget:
    """A parsed ``database_url``: ``kind`` is "sqlite" (``path`` set) or "postgresql" (``url`` set)."""

    kind: str
    path: Path | None = None
    url: str = ""

    @property
    def shown(self) -> str:
        return str(self.path) if self.path is not None else redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (and nothing else changed)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def parse_database_url(url: str | None, data_path: Path, *, allow_path: bool = False) -> DatabaseTarget:
    """The database ``url`` names; a :class:`SettingsError` (one line, password redacted) when
    it is not one we can open. ``allow_path``: a plain file path means that SQLite file."""
    text = (url or "").strip()
    if not text:
        return DatabaseTarget("sqlite", path=data_path / DB_FILE)
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        # sqlite:///relative and sqlite:////absolute, as SQLAlchemy writes them; the path only.
        path = rest[1:] if rest.startswith("/") else rest
        if not path or "?" in path:
            raise SettingsError(f"database_url {text!r}: expected sqlite:///path/to/file")
        return DatabaseTarget("sqlite", path=Path(path).expanduser())
    if sep and scheme in POSTGRES_SCHEMES:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise SettingsError(f"database_url {redact_url(text)}: {exc}") from None
        return DatabaseTarget("postgresql", url=text)
    if allow_path and not sep:
        return DatabaseTarget("sqlite", path=Path(text).expanduser())
    shown = redact_url(text) if sep else text
    raise SettingsError(
        f"database_url {shown!r}: expected empty (SQLite in data_dir), sqlite:///path or "
        "postgresql://user:password@host:port/dbname"
    )
