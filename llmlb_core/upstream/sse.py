"""Server-sent events: a bounded reader for an upstream's event stream, and the writer.

:func:`read_events` parses the ``text/event-stream`` format (the WHATWG rules: lines end with
CRLF, LF or CR; ``event:`` names the event, ``data:`` lines are joined with a newline, a line
starting with ``:`` is a comment, ``id:`` and ``retry:`` are ignored, a blank line ends the
event) from the raw bytes of a response (``httpx.Response.aiter_raw()``), chunk by chunk.

It is bounded: an event (its field lines together, also while its last line is still arriving)
may take at most ``max_event_bytes``, the whole stream ``max_total_bytes``; more is a
:class:`llmlb_core.upstream.client.BadAnswer`. That is why it does not use ``httpx-sse`` (or httpx's
``aiter_lines``): they collect a line until its end arrives, so a peer that never sends a
newline makes them buffer without limit. A stream that ends inside an event is a ``BadAnswer``
too (the peer was cut off; the spec would drop the event silently).

:class:`EventParser` is the same reader fed chunk by chunk, for a relay
(:mod:`llmlb_core.upstream.relay_checks`): it returns each block (the lines up to a blank line) with the
bytes it came in, so a checked event is passed on as it was sent.

:func:`format_event` writes one event; :func:`error_event` writes the OpenAI-shaped ``error``
event (``{"type": "error", "error": {...}}``) that the official SDKs raise as ``APIError``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from llmlb_core.server.errors import error_body
from llmlb_core.server.request_id import with_request_id
from llmlb_core.upstream.client import BadAnswer

ERROR_EVENT = "error"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event: its ``event:`` name ("message" when it has none) and its data."""

    event: str
    data: bytes


class SSEBlock(NamedTuple):
    """The lines up to a blank line, as they came: an event when it has data, else a keep-alive
    (comments, or nothing), or fields with nothing to dispatch. (A tuple: one is made per event
    of every relayed stream.)"""

    # Its bytes as received, the blank line that ends it included (when a CRLF is cut between
    # two chunks, the LF goes with the next block).
    raw: bytes
    name: bytes | None  # the ``event:`` field
    data: bytes | None  # the ``data:`` lines joined with a newline; None: no data line
    fields: bool  # it has a field line (``event``, ``data``, ``id``, ``retry`` or another)
    other_fields: bool  # a field line other than ``event`` and ``data`` among them

    def event(self) -> SSEEvent | None:
        """The event it dispatches (None when it has no data line)."""
        if self.data is None:
            return None
        try:
            name = (self.name or b"message").decode("utf-8")
        except UnicodeDecodeError:
            raise BadAnswer("an event name that is not UTF-8") from None
        return SSEEvent(name, self.data)


class _BlockBuilder:
    """The fields of the block being read, and how many bytes its lines took."""

    __slots__ = ("data", "fields", "name", "other", "size")

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.data: list[bytes] = []
        self.fields = False
        self.other = False
        self.size = 0

    def line(self, line: bytes) -> None:
        if line.startswith(b":"):
            return  # a comment (keep-alive)
        self.fields = True
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self.name = value
        elif field == b"data":
            self.data.append(value)
        else:
            self.other = True  # id, retry and unknown fields: nothing the reader dispatches

    def take(self, raw: bytes) -> SSEBlock:
        data = self.data
        joined = (data[0] if len(data) == 1 else b"\n".join(data)) if data else None
        block = SSEBlock(raw, self.name, joined, self.fields, self.other)
        self.name, self.data, self.fields, self.other, self.size = None, [], False, False, 0
        return block


class EventParser:
    """The blocks of a stream of raw byte chunks, fed one chunk at a time, within the bounds of
    the module doc (``max_total_bytes`` None: the caller bounds the total)."""

    def __init__(self, *, max_event_bytes: int, max_total_bytes: int | None = None) -> None:
        self._max_event = max_event_bytes
        self._max_total = max_total_bytes
        self._total = 0
        self._buffer = bytearray()  # from the start of the block being read
        self._line_start = 0  # where the line being read starts in the buffer
        self._skip_lf = False  # the last line ended with CR: an LF that follows belongs to it
        self._block = _BlockBuilder()

    def between_blocks(self) -> bool:
        """Whether nothing of a block is pending (a chunk fed now starts a block)."""
        return not self._buffer and not self._skip_lf

    def feed(self, chunk: bytes) -> list[SSEBlock]:
        """The blocks that ``chunk`` completes (:class:`BadAnswer` past a bound)."""
        if not chunk:
            return []
        self._total += len(chunk)
        if self._max_total is not None and self._total > self._max_total:
            raise BadAnswer(f"event stream over the limit of {self._max_total} bytes")
        buffer, block = self._buffer, self._block
        if not buffer and not self._skip_lf and b"\r" not in chunk:
            return self._feed_lf(chunk)
        scan = len(buffer)  # what is buffered holds no line end: search only the new bytes
        buffer += chunk
        start = self._line_start
        if self._skip_lf:
            self._skip_lf = False
            if buffer[scan] == 0x0A:  # kept in the buffer (it is part of the bytes passed on)
                scan = start = scan + 1
        block_start = 0
        blocks: list[SSEBlock] = []
        while True:
            lf = buffer.find(b"\n", scan)
            cr = buffer.find(b"\r", scan, lf if lf >= 0 else len(buffer))
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            line_start = start
            if end != cr:
                start = end + 1
            elif end + 1 < len(buffer):
                start = end + 2 if buffer[end + 1] == 0x0A else end + 1
            else:
                start, self._skip_lf = end + 1, True
            scan = start
            if end > line_start:
                block.size += end - line_start + 1
                if block.size > self._max_event:
                    raise BadAnswer(f"an event over the limit of {self._max_event} bytes")
                block.line(bytes(buffer[line_start:end]))
                continue
            blocks.append(block.take(bytes(buffer[block_start:start])))
            block_start = start
        if block_start:
            del buffer[:block_start]
        self._line_start = start - block_start
        if block.size + len(buffer) - self._line_start > self._max_event:
            raise BadAnswer(f"an event over the limit of {self._max_event} bytes")
        return blocks

    def _feed_lf(self, chunk: bytes) -> list[SSEBlock]:
        """:meth:`feed` of a chunk that starts a line and has LF line ends only (what servers
        send), nothing buffered: split in C, not searched line by line."""
        block, blocks = self._block, []
        lines = chunk.split(b"\n")
        tail = lines.pop()  # after the last line end: the start of a line (or nothing)
        block_start = end = 0
        for line in lines:
            end += len(line) + 1
            if line:
                block.size += len(line) + 1
                if block.size > self._max_event:
                    raise BadAnswer(f"an event over the limit of {self._max_event} bytes")
                block.line(line)
            else:
                blocks.append(block.take(chunk[block_start:end]))
                block_start = end
        if block_start < len(chunk):
            self._buffer += memoryview(chunk)[block_start:]
            if block.size + len(tail) > self._max_event:
                raise BadAnswer(f"an event over the limit of {self._max_event} bytes")
        self._line_start = len(self._buffer) - len(tail)
        return blocks

    def end(self) -> None:
        """The stream ended: :class:`BadAnswer` when it ended inside an event."""
        if self._buffer[self._line_start :].strip() or self._block.name is not None or self._block.data:
            raise BadAnswer("the event stream ended inside an event")


async def read_events(
    chunks: AsyncIterable[bytes], *, max_event_bytes: int, max_total_bytes: int
) -> AsyncGenerator[SSEEvent, None]:
    """The events of a stream of raw byte chunks, within the bounds of the module doc."""
    parser = EventParser(max_event_bytes=max_event_bytes, max_total_bytes=max_total_bytes)
    async for chunk in chunks:
        for block in parser.feed(chunk):
            event = block.event()
            if event is not None:
                yield event
    parser.end()


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
