"""What a relayed server-sent event stream (text, audio) must be: checked block by block as it
passes (:class:`SSERelayCheck`, used by :class:`llmlb_core.upstream.relay.Relay`).

The rules are made for the official openai SDK (``openai/_streaming.py``), the client every
OpenAI-compatible server is written for. It decodes every line as UTF-8 (one bad byte is an
exception in the client); it dispatches a block as soon as it has an event name, data, an
``id`` or a ``retry`` (an event with no data then fails to parse as JSON), and it keeps the last
``id`` for good, so that every later blank line dispatches an empty event too; it stops at
``data: [DONE]``; every other event's data must be JSON: an object with ``error`` is raised as
``APIError``, anything else becomes a chunk. It reads the event name only for the Assistants'
``thread.*`` events, which llmlb does not serve. So, block by block (the blocks of
:class:`llmlb_core.upstream.sse.EventParser`, bounded by ``max_event_bytes``):

- comments and blank lines (keep-alives) pass as they came;
- an event named nothing, ``message`` or ``error`` whose data is ``[DONE]`` or a JSON object
  passes as its bytes came; one that also has other fields (``id``, ``retry``, unknown ones)
  passes as its ``event:`` and ``data:`` lines only;
- an event with any other name, and a block of fields without data, are dropped (counted in
  ``dropped``): the SDK would read them as chunks, or fail on them;
- anything else is garbage, a :class:`BadAnswer`: a line that is not UTF-8, data that is neither
  a JSON object nor ``[DONE]``, an event over its bound, a stream that ends inside an event.

Passing a checked block's bytes, not a re-encoding, keeps the upstream's exact output; a chunk
that completes several blocks is passed as one piece, and a block is passed as soon as its blank
line is in (its partial lines wait for it: an event is checked whole before any of it goes).
"""

from __future__ import annotations

from typing import Protocol

from llmlb_core.upstream.client import BadAnswer, check_json_object, log_snippet
from llmlb_core.upstream.sse import EventParser, SSEBlock

# The event names passed on (none, the spec's default, and the error event the SDK raises).
PASSED_EVENT_NAMES = frozenset({b"message", b"error"})
DONE = b"[DONE]"


class RelayCheck(Protocol):
    """What a relay runs every upstream chunk through."""

    def feed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` (and of what came before it) to pass on now: possibly nothing.
        Raises :class:`BadAnswer` when the upstream must not have sent it."""
        ...

    def end(self) -> None:
        """The upstream ended its answer: :class:`BadAnswer` when something is cut off."""
        ...


class SSERelayCheck:
    """The rules of the module doc over one stream."""

    def __init__(self, *, max_event_bytes: int) -> None:
        self._parser = EventParser(max_event_bytes=max_event_bytes)
        self._max_event = max_event_bytes
        self.dropped = 0  # events and blocks not passed on

    def feed(self, chunk: bytes) -> bytes:
        if (
            len(chunk) <= self._max_event
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and self._parser.between_blocks()
            and self._plain_events_pass(chunk)
        ):
            return chunk
        blocks = self._parser.feed(chunk)
        if not blocks:
            return b""
        if len(blocks) == 1:
            return self._checked(blocks[0])
        return b"".join([self._checked(block) for block in blocks])

    def end(self) -> None:
        self._parser.end()

    def _plain_events_pass(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is whole ``data: <JSON object or [DONE]>`` events, one line each,
        LF-ended, UTF-8: what servers send, checked without a parse (the parser, between two
        blocks, makes the same of it). False: read it block by block."""
        if b"\r" in chunk or not (chunk.isascii() or _is_utf8(chunk)):
            return False
        events = chunk[:-2].split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: ") or b"\n" in event:
                return False
        for event in events:
            data = event[6:]
            if data != DONE:
                try:
                    check_json_object(data)
                except BadAnswer:
                    return False  # the parser says why
        return True

    def _checked(self, block: SSEBlock) -> bytes:
        """The bytes to pass for ``block`` (empty: dropped)."""
        raw = block.raw
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadAnswer(
                    f"an event that is not UTF-8: {log_snippet(raw[: exc.start + 1], 120)}"
                ) from None
        data = block.data
        if data is None:
            if block.fields:  # e.g. "event: ping" alone: the SDK would dispatch an empty event
                self.dropped += 1
                return b""
            return raw  # comments, blank lines: keep-alives
        name = block.name
        if name is not None and name not in PASSED_EVENT_NAMES:
            self.dropped += 1
            return b""
        if data != DONE:
            try:
                check_json_object(data)
            except BadAnswer:
                raise BadAnswer(
                    f"an event whose data is neither a JSON object nor [DONE]: {log_snippet(data, 120)}"
                ) from None
        if block.other_fields:  # the SDK would keep an id for good: pass the event and data only
            head = b"event: " + name + b"\n" if name is not None else b""
            return head + b"".join([b"data: " + line + b"\n" for line in data.split(b"\n")]) + b"\n"
        return raw


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
