"""The rules a relayed server-sent event stream is held to (``llmlb_core.upstream.relay_checks``), block
by block, with the official openai SDK's own SSE decoder as the judge of what a client reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

import pytest
from openai._streaming import SSEDecoder

from llmlb_core.upstream.client import BadAnswer
from llmlb_core.upstream.relay_checks import SSERelayCheck

CHUNK = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
VALID = (
    b": keep-alive\n\n"
    + CHUNK
    + b'data: {"choices": [{"delta": {"content": "\xc3\xa9t\xc3\xa9"}}]}\r\n\r\n'  # UTF-8, CRLF
    + b'event: message\ndata: {"a":\ndata: 1}\n\n'  # data over two lines, still one JSON object
    + b'data: {"error": {"message": "context too long", "type": "invalid_request_error"}}\n\n'
    + b"data: [DONE]\n\n"
)


def relay(parts: Iterable[bytes], max_event_bytes: int = 1 << 20) -> tuple[list[bytes], SSERelayCheck]:
    check = SSERelayCheck(max_event_bytes=max_event_bytes)
    passed = [out for part in parts if (out := check.feed(part))]
    check.end()
    return passed, check


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def sdk_events(data: bytes) -> list[tuple[str | None, str]]:
    """What the openai SDK's decoder makes of ``data`` (it raises on what it cannot read)."""

    async def once() -> AsyncIterator[bytes]:
        yield data

    return [(e.event, e.data) async for e in SSEDecoder().aiter_bytes(once())]


@pytest.mark.parametrize("piece", [1, 3, 17, len(VALID)])
def test_valid_events_pass_as_their_bytes_each_once_complete(piece: int) -> None:
    passed, check = relay(split_every(VALID, piece))
    assert b"".join(passed) == VALID and check.dropped == 0
    # Never a partial event (a CRLF cut after its CR ends the event: its LF goes with the next).
    assert all(p.endswith((b"\n\n", b"\r\n\r\n", b"\r\n\r")) for p in passed)


def test_a_chunk_completing_several_events_is_passed_in_one_piece() -> None:
    passed, _ = relay([CHUNK * 3 + b"data: {", b"}\n\n"])
    assert passed == [CHUNK * 3, b"data: {}\n\n"]


@pytest.mark.parametrize(
    "chunk",
    [
        CHUNK * 3 + b"data: [DONE]\n\n",  # plain events: checked without a parse
        CHUNK + b"data: {\ndata: }\n\n",  # an event of two data lines: parsed
        CHUNK + b"event: ping\ndata: {}\n\n",  # an unknown event: parsed, dropped
    ],
    ids=["plain", "two data lines", "unknown event"],
)
def test_a_chunk_passes_the_same_whole_or_in_pieces(chunk: bytes) -> None:
    whole, _ = relay([chunk])
    pieces, _ = relay(split_every(chunk, 7))
    assert b"".join(whole) == b"".join(pieces)


async def test_what_passes_is_what_the_openai_sdk_reads() -> None:
    passed, _ = relay([VALID])
    events = await sdk_events(b"".join(passed))
    parsed = [json.loads(data) for _, data in events[:-1]]  # the SDK parses every other event
    assert parsed[0] == {"choices": [{"delta": {"content": "hi"}}]} and parsed[2] == {"a": 1}
    assert events[-1] == (None, "[DONE]") and len(events) == 5


UNKNOWN = [
    b"event: thread.run.created\ndata: {}\n\n",  # the SDK would read it as an Assistants event
    b'event: ping\ndata: {"type": "ping"}\n\n',  # as a chunk
    b"event: ping\n\n",  # as an empty event it cannot parse
    b"id: 7\n\n",
    b"retry: 100\n\n",
    b'error: {"code": 500}\n\n',  # llama.cpp's non-standard field: nothing the SDK dispatches
]


@pytest.mark.parametrize("block", UNKNOWN)
async def test_unknown_events_and_fields_without_data_are_dropped(block: bytes) -> None:
    passed, check = relay([CHUNK, block, CHUNK])
    assert passed == [CHUNK, CHUNK] and check.dropped == 1
    assert len(await sdk_events(b"".join(passed))) == 2


async def test_an_events_id_and_retry_are_dropped_so_later_keep_alives_stay_silent() -> None:
    """The SDK keeps the last id for good: every blank line after it would then dispatch an
    empty event, which it fails to parse as JSON."""
    with_id = b'id: 7\nretry: 10\ndata: {"n": 1}\nx-extra: 1\n\n'
    raw = with_id + b": ping\n\n" + CHUNK
    assert len(await sdk_events(raw)) == 3  # the keep-alive became an empty event
    passed, _ = relay([raw])
    assert b"".join(passed) == b'data: {"n": 1}\n\n: ping\n\n' + CHUNK
    read = await sdk_events(b"".join(passed))
    assert len(read) == 2 and read[0] == (None, '{"n": 1}')
    named, _ = relay([b"event: error\nid: 1\ndata: {}\n\n"])
    assert named == [b"event: error\ndata: {}\n\n"]


GARBAGE = {
    "data that is not JSON": (b"data: hello\n\n", "neither a JSON object nor"),
    "broken JSON": (b'data: {"choices": [\n\n', "neither a JSON object nor"),
    "a JSON array": (b"data: [1, 2]\n\n", "neither a JSON object nor"),
    "a JSON number": (b"data: 1\n\n", "neither a JSON object nor"),
    "empty data": (b"data:\n\n", "neither a JSON object nor"),
    "invalid UTF-8 in data": (b'data: {"content": "\xff\xfe"}\n\n', "not UTF-8"),
    "invalid UTF-8 in a comment": (b": \xc3\n\n", "not UTF-8"),
    "invalid UTF-8 in an event name": (b"event: \xff\ndata: {}\n\n", "not UTF-8"),
    "JSON nested 1000 deep": (b'data: {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}\n\n", "neither"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_a_bad_answer_and_nothing_of_it_passes(case: str) -> None:
    block, says = GARBAGE[case]
    check = SSERelayCheck(max_event_bytes=1 << 20)
    assert check.feed(CHUNK) == CHUNK
    with pytest.raises(BadAnswer, match=says):
        check.feed(block + CHUNK)


def test_endless_100_kb_chunks_are_refused_at_the_event_bound() -> None:
    """A node that streams 100 KB chunks without ever ending an event: refused once the event is
    over its bound, having passed nothing of it (the total is the relay's to bound)."""
    check = SSERelayCheck(max_event_bytes=1 << 20)
    assert check.feed(b"data: {") == b""
    with pytest.raises(BadAnswer, match="an event over the limit of 1048576 bytes"):
        for _ in range(20):
            assert check.feed(b"x" * 100_000) == b""


def test_a_stream_that_ends_inside_an_event_is_refused() -> None:
    check = SSERelayCheck(max_event_bytes=1 << 20)
    assert check.feed(CHUNK + b'data: {"cut') == CHUNK
    with pytest.raises(BadAnswer, match="ended inside an event"):
        check.end()
