"""Server-sent events: a bounded reader for an upstream's event stream, and the writer.

:func:`read_events` parses the ``text/event-stream`` format (the WHATWG rules: lines end with
CRLF, LF or CR; ``event:`` names the event, ``data:`` lines are joined with a newline, a line
starting with ``:`` is a comment, ``id:`` and ``retry:`` are ignored, a blank line ends the
event) from the raw bytes of a response (``httpx.Response.aiter_raw()``), chunk by chunk.

It is bounded: an event (its field lines together, also while its last line is still arriving)
may take at most ``max_event_bytes``, the whole stream ``max_total_bytes``; more is a
:class:`llmlb_core.upstream.BadAnswer`. That is why it does not use ``httpx-sse`` (or httpx's
``aiter_lines``): they collect a line until its end arrives, so a peer that never sends a
newline makes them buffer without limit. A stream that ends inside an event is a ``BadAnswer``
too (the peer was cut off; the spec would drop the event silently).

:func:`format_event` writes one event; :func:`error_event` writes the OpenAI-shaped ``error``
event (``{"type": "error", "error": {...}}``) that the official SDKs raise as ``APIError``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

import msgspec

from llmlb_core.errors import error_body
from llmlb_core.request_id import with_request_id
from llmlb_core.upstream import BadAnswer

ERROR_EVENT = "error"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event: its ``event:`` name ("message" when it has none) and its data."""

    event: str
    data: bytes


class _EventBuilder:
    """The fields of the event being read, and how many bytes its lines took."""

    __slots__ = ("data", "name", "size")

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.data: list[bytes] = []
        self.size = 0

    def line(self, line: bytes) -> None:
        if line.startswith(b":"):
            return  # a comment (keep-alive)
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self.name = value
        elif field == b"data":
            self.data.append(value)
        # id, retry and unknown fields are ignored

    def pending(self) -> bool:
        return self.name is not None or bool(self.data)

    def take(self) -> SSEEvent | None:
        """The finished event (None when it had no data line: nothing to dispatch)."""
        name, data = self.name, self.data
        self.name, self.data, self.size = None, [], 0
        if not data:
            return None
        try:
            event = (name or b"message").decode("utf-8")
        except UnicodeDecodeError:
            raise BadAnswer("an event name that is not UTF-8") from None
        return SSEEvent(event, b"\n".join(data))


async def read_events(
    chunks: AsyncIterable[bytes], *, max_event_bytes: int, max_total_bytes: int
) -> AsyncGenerator[SSEEvent, None]:
    """The events of a stream of raw byte chunks, within the bounds of the module doc."""
    buffer = bytearray()
    event = _EventBuilder()
    total = 0
    skip_lf = False  # the last line ended with CR: an LF that follows belongs to it
    async for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if total > max_total_bytes:
            raise BadAnswer(f"event stream over the limit of {max_total_bytes} bytes")
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        skip_lf = False
        scan = len(buffer)  # what is buffered holds no line end: search only the new bytes
        buffer += chunk
        start = 0
        while True:
            lf = buffer.find(b"\n", scan)
            cr = buffer.find(b"\r", scan, lf if lf >= 0 else len(buffer))
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            line = bytes(buffer[start:end])
            if end != cr:
                start = end + 1
            elif end + 1 < len(buffer):
                start = end + 2 if buffer[end + 1] == 0x0A else end + 1
            else:
                start, skip_lf = end + 1, True
            scan = start
            if line:
                event.size += len(line) + 1
                if event.size > max_event_bytes:
                    raise BadAnswer(f"an event over the limit of {max_event_bytes} bytes")
                event.line(line)
                continue
            done = event.take()
            if done is not None:
                yield done
        del buffer[:start]
        if event.size + len(buffer) > max_event_bytes:
            raise BadAnswer(f"an event over the limit of {max_event_bytes} bytes")
    if buffer.strip() or event.pending():
        raise BadAnswer("the event stream ended inside an event")


def format_event(event: str, data: bytes) -> bytes:
    """``event: <event>`` and ``data: <data>`` (one ``data:`` line per line of ``data``), then
    the blank line that ends the event."""
    if not event or any(c in event for c in "\r\n"):
        raise ValueError(f"not an event name: {event!r}")
    lines = data.splitlines() or [b""]
    return b"event: " + event.encode() + b"".join(b"\ndata: " + line for line in lines) + b"\n\n"


def error_event(message: str, *, code: str, type: str = "server_error", param: str | None = None) -> bytes:
    """The ``error`` event that ends a stream that failed after its first event; a server-side
    error's message quotes the request id (as every 5xx body does)."""
    if type == "server_error":
        message = with_request_id(message)
    body = {"type": ERROR_EVENT, **error_body(message, type=type, param=param, code=code)}
    return format_event(ERROR_EVENT, msgspec.json.encode(body))
