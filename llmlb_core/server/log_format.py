"""How the router and the node write their logs: one line per record on stderr, as text or JSON.

- ``text``: ``2026-01-02 03:04:05,678 INFO    llmlb.access: POST /v1/... id=req_...``; a record
  logged while a request is handled ends with ``(request req_...)`` unless it names the id
  already, so a node's or the router's lines about one request can be found with one grep.
- ``json`` (``log_format = "json"``): one JSON object per line, for log shippers: ``time``
  (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``request_id`` (inside a request), the
  request log's fields (:mod:`llmlb_core.server.access_log`: ``method``, ``route``, ``status``,
  ``model``, ``node``, ``duration_s``, ``queue_wait_s``, ``bytes_in``, ``bytes_out``, ...), any
  other ``extra`` the record carries, and ``exception`` (the traceback) when there is one.

uvicorn's own lines (``Started server process``, ``Uvicorn running on ...``) are logged under
``uvicorn.error`` whatever they say; they are shown as ``llmlb.server`` (:class:`ServerNames`).

Nothing a client, a node or an endpoint sends can forge a line. :func:`log_field` is the one
escaping function for a value in a line (the request log's ``key=value`` fields, ids and names in
messages): a value that is not one printable word comes out double-quoted, with quotes,
backslashes, control, format and line-breaking characters written as escapes (``\n``,
``\x1b``, ``\u2028``). As a second guard, the text format writes every message with those
characters escaped (:func:`escape_text`; a traceback that follows it is the process's own), and
the JSON format escapes them inside its strings.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Literal

from llmlb_core.server import request_id

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# What uvicorn's loggers are shown as.
SERVER_LOGGER = "llmlb.server"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")

# The attributes every LogRecord has (what is not among them came with ``extra=``), and those
# extras that are not worth a key (uvicorn's colored copy of its message).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "request_id",
    "access",
}


# Characters written as escapes: controls, line and paragraph separators, format characters
# (bidirectional overrides), unassigned and private-use code points: whatever str.isprintable()
# refuses, besides the space.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
# A value that must be quoted in a key=value line: empty, or holding a space, a quote or a backslash.
_NEEDS_QUOTES = re.compile(r'[\s"\\]')
# Printable ASCII but the space, the quote and the backslash: logged as it is.
_PLAIN_ASCII_WORD = re.compile(r"[!#-\[\]-~]+").fullmatch


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def escape_text(text: str) -> str:
    """``text`` on one line: every character :meth:`str.isprintable` refuses (but the space)
    written as an escape. Printable text is returned as it is (the common case costs one C call)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def log_field(value: object) -> str:
    """One value of a log line, safe whatever it holds: as it is when it is one printable word,
    else in double quotes with quotes, backslashes and unprintable characters escaped."""
    text = value if isinstance(value, str) else str(value)
    if _PLAIN_ASCII_WORD(text) is not None:  # the common case: one regex call
        return text
    if text and text.isprintable() and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else _escape(c) for c in text) + '"'


def log_list(values: Iterable[object], limit: int = 10) -> str:
    """Values for one log line, each through :func:`log_field`, the first ``limit`` of them:
    ``a, b, c`` or ``a, b, c (+990 more)``; ``-`` when there are none."""
    items = list(values)
    shown = ", ".join(log_field(v) for v in items[:limit])
    more = len(items) - limit
    return (shown or "-") + (f" (+{more} more)" if more > 0 else "")


class RequestIds(logging.Filter):
    """Give every record ``request_id``: the request being handled when it was logged, or None
    (the id is a context variable: it follows the request into threads it starts)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.current()
        return True


class ServerNames(logging.Filter):
    """Show uvicorn's records as :data:`SERVER_LOGGER` (``uvicorn.error`` reads like an error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in _UVICORN_LOGGERS:
            record.name = SERVER_LOGGER
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        if rid and rid not in record.message:
            line = f"{line} (request {rid})"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        access = getattr(record, "access", None)  # the request log's RequestRecord
        if access is not None:
            for key, value in access.fields().items():
                out.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(out, default=str, ensure_ascii=False)
        # JSON escapes control characters; the rest of what isprintable() refuses (line
        # separators, bidi overrides) it leaves raw, and viewers may break lines or reorder text at them.
        if line.isprintable():
            return line
        return "".join(c if c.isprintable() else _json_escape(c) for c in line)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (so that a second call replaces it)."""


def configure(level: str, fmt: str = "text", *, stream: IO[str] | None = None) -> None:
    """Log records at ``level`` and above to ``stream`` (stderr) as ``fmt`` (text or json)."""
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIds())
    handler.addFilter(ServerNames())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # One line per heartbeat and upstream call is noise at INFO.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
