"""The bounded server-sent event reader and the writer (``llmlb_core.upstream.sse``).

Chunks are fed as an async iterable of bytes, which is what ``httpx.Response.aiter_raw()``
yields; no server is needed. The official openai SDK's own SSE decoder is the reference for what
a client reads from :func:`format_event` and :func:`error_event`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

import httpx
import pytest
from openai._streaming import SSEDecoder

from llmlb_core.server.request_id import _current
from llmlb_core.upstream.client import BadAnswer
from llmlb_core.upstream.sse import EventParser, SSEBlock, SSEEvent, error_event, format_event, read_events

BIG = 1 << 20


async def chunks_of(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(
    parts: Iterable[bytes], *, event_limit: int = BIG, total_limit: int = BIG
) -> list[SSEEvent]:
    return [
        e
        async for e in read_events(chunks_of(parts), max_event_bytes=event_limit, max_total_bytes=total_limit)
    ]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


STREAM = (
    b": keep-alive comment\n\n"
    b'event: image_generation.partial_image\ndata: {"a": 1}\n\n'
    b"data: first line\ndata: second line\nid: 7\nretry: 100\n\n"
    b"event: done\ndata:no-space\n\n"
)
EXPECTED = [
    SSEEvent("image_generation.partial_image", b'{"a": 1}'),
    SSEEvent("message", b"first line\nsecond line"),
    SSEEvent("done", b"no-space"),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, len(STREAM)])
async def test_events_are_the_same_however_the_bytes_are_cut(piece: int) -> None:
    assert await read_all(split_every(STREAM, piece)) == EXPECTED


@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
async def test_every_line_ending_of_the_spec(newline: bytes, piece: int) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert await read_all(split_every(stream, piece)) == EXPECTED


async def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    events = await read_all([b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n"])
    assert events == [SSEEvent("message", b"x"), SSEEvent("message", b"y")]


async def test_an_event_without_data_is_not_dispatched() -> None:
    assert await read_all([b"event: nothing\n\nevent: e\ndata: 1\n\n"]) == [SSEEvent("e", b"1")]


async def test_the_events_match_what_the_openai_sdk_decodes() -> None:
    sdk = [
        (e.event or "message", e.data.encode()) async for e in SSEDecoder().aiter_bytes(chunks_of([STREAM]))
    ]
    assert sdk == [(e.event, e.data) for e in EXPECTED]


async def test_an_event_over_its_bound_is_refused_while_its_line_is_still_arriving() -> None:
    sent = 0

    async def endless_line() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"data: "
        while True:  # a node that never sends a newline
            sent += 1000
            yield b"x" * 1000

    with pytest.raises(BadAnswer, match="over the limit of 10000 bytes"):
        async for _ in read_events(endless_line(), max_event_bytes=10_000, max_total_bytes=BIG):
            pass
    assert sent <= 11_000  # refused as soon as the bound was passed, not buffered on


async def test_an_event_of_many_lines_counts_them_all() -> None:
    stream = b"".join(b"data: " + b"y" * 90 + b"\n" for _ in range(20)) + b"\n"
    with pytest.raises(BadAnswer, match="event over the limit"):
        await read_all([stream], event_limit=1000)
    assert len((await read_all([stream], event_limit=2000))[0].data) == 20 * 90 + 19


async def test_events_under_the_bound_pass_and_the_total_is_bounded() -> None:
    event = format_event("e", b"z" * 500)
    assert len(await read_all([event] * 10, event_limit=600)) == 10
    with pytest.raises(BadAnswer, match="event stream over the limit of 5000 bytes"):
        await read_all([event] * 10, event_limit=600, total_limit=5000)


@pytest.mark.parametrize("tail", [b"data: cut", b"data: cut\n", b"event: x\n"])
async def test_a_stream_that_ends_inside_an_event_is_refused(tail: bytes) -> None:
    with pytest.raises(BadAnswer, match="ended inside an event"):
        await read_all([b"data: ok\n\n", tail])


async def test_a_trailing_comment_or_blank_line_is_a_clean_end() -> None:
    assert await read_all([b"data: ok\n\n", b": bye\n", b"\n"]) == [SSEEvent("message", b"ok")]


async def test_an_event_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadAnswer, match="not UTF-8"):
        await read_all([b"event: \xff\ndata: 1\n\n"])


def parse_blocks(parts: Iterable[bytes], event_limit: int = BIG) -> list[SSEBlock]:
    parser = EventParser(max_event_bytes=event_limit)
    blocks = [block for part in parts for block in parser.feed(part)]
    parser.end()
    return blocks


@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_the_parsers_blocks_hold_the_bytes_as_sent(newline: bytes, piece: int) -> None:
    """A relay passes a checked block's bytes on: together they are the stream, however cut."""
    stream = (STREAM + b"\n").replace(b"\n", newline)  # a stray blank line too
    blocks = parse_blocks(split_every(stream, piece))
    joined = b"".join(b.raw for b in blocks)
    # An LF that completes a CRLF cut between chunks goes with the next block: at the very end
    # of the stream there is none (the CR alone ended the line).
    assert joined == stream[: len(joined)] and stream[len(joined) :] in (b"", b"\n")
    assert [e for b in blocks if (e := b.event()) is not None] == EXPECTED
    assert [(b.fields, b.other_fields) for b in blocks] == [
        (False, False),  # the comment
        (True, False),
        (True, True),  # id and retry
        (True, False),
        (False, False),  # the stray blank line
    ]


def test_a_block_of_fields_without_data_dispatches_nothing() -> None:
    [named, ident] = parse_blocks([b"event: ping\n\nid: 7\n\n"])
    assert (named.name, named.data, named.fields, named.event()) == (b"ping", None, True, None)
    assert (ident.data, ident.other_fields) == (None, True)


def test_the_parser_bounds_an_event_and_leaves_the_total_to_its_caller() -> None:
    parser = EventParser(max_event_bytes=100)
    for _ in range(1000):  # 90 KB through a parser without a total bound
        assert len(parser.feed(b"data: " + b"x" * 80 + b"\n\n")) == 1
    with pytest.raises(BadAnswer, match="over the limit of 100 bytes"):
        parser.feed(b"data: " + b"x" * 101)


class Chunks(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


async def test_the_reader_runs_over_an_httpx_response() -> None:
    response = httpx.Response(200, stream=Chunks(split_every(STREAM, 5)))
    events = [e async for e in read_events(response.aiter_raw(), max_event_bytes=BIG, max_total_bytes=BIG)]
    assert events == EXPECTED


# --- the writer -----------------------------------------------------------------------------
async def test_format_event_round_trips_through_the_reader() -> None:
    data = json.dumps({"type": "x", "text": "two\nlines"}).encode()  # JSON escapes the newline
    written = format_event("image_edit.completed", data)
    assert written == b"event: image_edit.completed\ndata: " + data + b"\n\n"
    assert await read_all([written]) == [SSEEvent("image_edit.completed", data)]
    multi = format_event("m", b"a\nb")
    assert multi == b"event: m\ndata: a\ndata: b\n\n"
    assert await read_all([multi]) == [SSEEvent("m", b"a\nb")]


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb"])
def test_format_event_refuses_a_name_that_would_break_the_stream(name: str) -> None:
    with pytest.raises(ValueError):
        format_event(name, b"{}")


async def test_error_event_is_what_the_sdk_raises() -> None:
    token = _current.set("req_abc")
    try:
        written = error_event("Node 'n1' stopped streaming", code="upstream_stream_broken")
    finally:
        _current.reset(token)
    [event] = await read_all([written])
    assert event.event == "error"
    body = json.loads(event.data)
    assert body == {
        "type": "error",
        "error": {
            "message": "Node 'n1' stopped streaming (request id: req_abc)",
            "type": "server_error",
            "param": None,
            "code": "upstream_stream_broken",
        },
    }
    client_error = json.loads(
        (await read_all([error_event("bad", code="c", type="invalid_request_error")]))[0].data
    )
    assert client_error["error"]["message"] == "bad"  # no request id on a client's own mistake
