"""The upstream client's transport against a peer that speaks broken HTTP on purpose
(``tests.support.raw_http``, real loopback sockets): every failure is an ``httpx`` error of the
right kind (``llmlb_core.upstream.transport``), none escapes as an aiohttp or Python exception,
and none hangs.

Garbage is ``is_garbled`` (the forwarder makes it a 502 ``bad_upstream_response``); a connection
that breaks is neither garbled nor a timeout (``upstream_unreachable``); a stall is a timeout.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from llmlb_core.upstream.client import BadAnswer, is_garbled, is_timeout, read_answer, upstream_client
from tests.support.raw_http import RESET, Pause, RawAnswer, RawHttpServer, chunk, head, json_body

MB = 1024 * 1024
SSE = head("200 OK", "transfer-encoding: chunked", content_type="text/event-stream")
FIRST = chunk(b'data: {"n": 1}\n\n')


@pytest.fixture
def peer() -> Iterator[RawHttpServer]:
    server = RawHttpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    made = upstream_client(connect_timeout_s=2, read_timeout_s=30)
    yield made
    await made.aclose()


async def exchange(
    client: httpx.AsyncClient, url: str, chunks: list[bytes] | None = None
) -> tuple[httpx.Response, list[bytes]]:
    """POST, then read the body into ``chunks`` (which keeps what came before a failure)."""
    chunks = [] if chunks is None else chunks
    response = await client.send(client.build_request("POST", url + "/x", content=b"{}"), stream=True)
    try:
        async for piece in response.aiter_raw():
            chunks.append(piece)
    finally:
        await response.aclose()
    return response, chunks


BROKEN_HEADS = {
    "two different content-length": head("200 OK", "content-length: 2", "content-length: 5") + b"{}",
    "HTTP/9.9 abc def": b"HTTP/9.9 abc def\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
    "a 5 MB header": head("200 OK", "x-big: " + "a" * (5 * MB), "content-length: 2") + b"{}",
    "200 headers": head("200 OK", *(f"x-h{i}: 1" for i in range(200)), "content-length: 2") + b"{}",
    "not HTTP at all": b"\x00\x01\x02 hello\r\n\r\n",
    "content-length and chunked": head("200 OK", "content-length: 5", "transfer-encoding: chunked")
    + b"0\r\n\r\n",
    "a status of 1000": b"HTTP/1.1 1000 OK\r\ncontent-length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("case", sorted(BROKEN_HEADS))
async def test_a_broken_head_is_garbled(peer: RawHttpServer, client: httpx.AsyncClient, case: str) -> None:
    peer.default = RawAnswer([BROKEN_HEADS[case]])
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        await exchange(client, peer.url)
    assert is_garbled(raised.value) and not is_timeout(raised.value)
    assert time.monotonic() - started < 5
    assert "\n" not in str(raised.value) and len(str(raised.value)) <= 300  # fit for one log line


BROKEN_BODIES = {
    "a chunk size that is not hex": [SSE, FIRST, Pause(0.05), b"zz\r\nxx\r\n"],
    "a chunk longer than its size": [SSE, FIRST, Pause(0.05), b"3\r\nabcdef\r\n"],
    "a 100 KB trailer": [SSE, FIRST, Pause(0.05), b"0\r\nx-t: " + b"a" * 100_000 + b"\r\n\r\n"],
}


@pytest.mark.parametrize("case", sorted(BROKEN_BODIES))
async def test_a_body_that_turns_to_garbage_is_garbled_at_once(
    peer: RawHttpServer, client: httpx.AsyncClient, case: str
) -> None:
    """aiohttp's C parser forgets the body's reader when it gives up on the body: without the
    transport's fix this read waits forever (its read timeout cancelled too)."""
    peer.default = RawAnswer(BROKEN_BODIES[case])
    started = time.monotonic()
    chunks: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        await exchange(client, peer.url, chunks)
    assert is_garbled(raised.value)
    assert chunks[0] == b'data: {"n": 1}\n\n'  # the head was fine: the body broke after it
    assert time.monotonic() - started < 5


CUT_OFF = {
    "closed before the declared length": [head("200 OK", "content-length: 100"), b'{"a":', Pause(0.05)],
    "reset mid-body": [SSE, FIRST, Pause(0.05), RESET],
    "reset before the body": [head("200 OK", "content-length: 100"), Pause(0.05), RESET],
    "closed inside a chunked body": [SSE, FIRST, Pause(0.05)],
}


@pytest.mark.parametrize("case", sorted(CUT_OFF))
async def test_a_body_cut_off_is_a_read_error(
    peer: RawHttpServer, client: httpx.AsyncClient, case: str
) -> None:
    peer.default = RawAnswer(CUT_OFF[case])
    with pytest.raises(httpx.ReadError) as raised:
        await exchange(client, peer.url)
    assert not is_garbled(raised.value) and not is_timeout(raised.value)


async def test_a_peer_that_closes_without_answering_or_refuses_cannot_be_reached(
    peer: RawHttpServer, client: httpx.AsyncClient
) -> None:
    peer.default = RawAnswer([])
    with pytest.raises(httpx.ConnectError):
        await exchange(client, peer.url)
    url = peer.url
    peer.stop()
    with pytest.raises(httpx.ConnectError) as refused:
        await exchange(client, url)
    assert type(refused.value.__cause__).__name__ == "ClientConnectorError"  # what log lines name


async def test_a_stall_is_a_timeout(peer: RawHttpServer) -> None:
    peer.default = RawAnswer([SSE, FIRST, Pause(5)])
    quick = upstream_client(connect_timeout_s=2, read_timeout_s=0.3)
    try:
        with pytest.raises(httpx.ReadTimeout) as raised:
            await exchange(quick, peer.url)
        assert is_timeout(raised.value) and not is_garbled(raised.value)
    finally:
        await quick.aclose()


async def test_a_reason_phrase_that_is_not_utf8_is_no_failure(
    peer: RawHttpServer, client: httpx.AsyncClient
) -> None:
    """httpx-aiohttp's transport raised ``UnicodeEncodeError`` here (and leaked the connection)."""
    peer.default = RawAnswer([b"HTTP/1.1 200 \xff\xfe\r\ncontent-length: 2\r\n\r\n{}"])
    response, chunks = await exchange(client, peer.url)
    assert response.status_code == 200 and chunks == [b"{}"]


async def test_a_well_formed_answer_passes(peer: RawHttpServer, client: httpx.AsyncClient) -> None:
    """The control: the same peer, speaking HTTP/1.1, with a body in pieces."""
    peer.default = RawAnswer([json_body({"ok": True})])
    response, chunks = await exchange(client, peer.url)
    assert response.status_code == 200 and b"".join(chunks) == b'{"ok": true}'
    peer.default = RawAnswer([SSE, FIRST, Pause(0.05), chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"])
    response, chunks = await exchange(client, peer.url)
    assert chunks == [b'data: {"n": 1}\n\n', b"data: [DONE]\n\n"]


async def test_answers_are_asked_for_unencoded_and_an_encoded_one_is_not_inflated(
    peer: RawHttpServer, client: httpx.AsyncClient
) -> None:
    """A gzip bomb: 64 MiB of zeros in 64 KiB. httpx decodes what it is told is gzip, a whole
    read piece at once, before anything is counted; the router asks for no encoding and refuses
    an answer that has one, unread."""
    bomb = gzip.compress(bytes(64 * MB), compresslevel=9)
    peer.default = RawAnswer(
        [head("200 OK", "content-encoding: gzip", f"content-length: {len(bomb)}") + bomb]
    )
    response = await client.send(client.build_request("POST", peer.url + "/x", content=b"{}"), stream=True)
    try:
        with pytest.raises(BadAnswer, match="content encoding 'gzip'"):
            await read_answer(response, 16 * MB)
    finally:
        await response.aclose()
    assert peer.requests[0].headers["accept-encoding"] == "identity"
