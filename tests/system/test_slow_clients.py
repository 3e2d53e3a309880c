"""Slow, idle and oversized clients are cut off (issue 8, item 8; issue 17, item 8): a real router
(and node) process with 1-second client timeouts, raw sockets that hold connections the slowloris
ways or send heads of hundreds of KB, and normal requests answered meanwhile. Every loop has a
fixed bound; every socket is closed."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.servers import Proc, create_key, node_proc, router_proc

TIMEOUT_S = 1.0
# A closed connection must be seen by then: the timeout plus room for a busy 2-core machine.
WITHIN_S = TIMEOUT_S + 2.5
# The whole body's deadline: above what the gap tests take, below what the trickle test takes.
BODY_DEADLINE_S = 3.0
ROUTER_ENV = {
    "LLMLB_CLIENT_HEADER_TIMEOUT_S": str(TIMEOUT_S),
    "LLMLB_CLIENT_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "LLMLB_CLIENT_BODY_DEADLINE_S": str(BODY_DEADLINE_S),
    "LLMLB_CLIENT_KEEP_ALIVE_S": str(TIMEOUT_S),
}


@pytest.fixture
def router(tmp_path: Path, procs: list[Proc]) -> Proc:
    proc = router_proc(tmp_path, env=ROUTER_ENV)
    procs.append(proc)
    return proc.start().wait_healthy()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(url: str, opened: list[socket.socket]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    opened.append(sock)
    return sock


def wait_closed(sock: socket.socket, within: float = WITHIN_S) -> tuple[float | None, bytes]:
    """(seconds until the server closed ``sock`` or None if it did not within ``within``, bytes read)."""
    started = time.monotonic()
    data = b""
    while (left := within - (time.monotonic() - started)) > 0:
        sock.settimeout(min(0.2, left))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started, data
        if not chunk:
            return time.monotonic() - started, data
        data += chunk
    return None, data


def wait_all_closed(socks: list[socket.socket], within: float = WITHIN_S) -> list[tuple[float | None, bytes]]:
    """:func:`wait_closed` for each of ``socks``, all within one deadline."""
    deadline = time.monotonic() + within
    return [wait_closed(sock, max(0.05, deadline - time.monotonic())) for sock in socks]


def send_until_closed(sock: socket.socket, payload: bytes, every: float, max_bytes: int) -> tuple[float, int]:
    """Send ``payload`` one byte per ``every`` seconds until the server stops the connection.

    Returns (seconds, bytes sent); fails if the server took all ``max_bytes`` bytes."""
    started = time.monotonic()
    for sent, byte in enumerate(payload[:max_bytes]):
        sock.settimeout(every)
        try:
            sock.recv(1, socket.MSG_PEEK)  # an answer, or b"": closed; either way the server acted
            return time.monotonic() - started, sent
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started, sent
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started, sent
    took = time.monotonic() - started
    raise AssertionError(f"the server accepted {max_bytes} trickled bytes over {took:.1f}s")


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a content-length: (head, body); at most 5 s."""
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data and len(data) < 65536:
        data += sock.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head, body


def expect_408(data: bytes) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_timeout" and error["type"] == "timeout_error"
    return dict(error)


def still_serves(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_idle_sockets_are_closed(router: Proc, sockets: list[socket.socket]) -> None:
    idle = [connect(router.url, sockets) for _ in range(100)]
    still_serves(router.url)  # the idle sockets do not block anyone
    results = wait_all_closed(idle)
    assert all(elapsed is not None for elapsed, _ in results), "idle sockets left open"
    assert all(data == b"" for _, data in results), "an idle socket that sent nothing gets no answer"
    assert results[0][0] is not None and results[0][0] > TIMEOUT_S * 0.8
    still_serves(router.url)


def test_trickled_headers_get_a_408(router: Proc, sockets: list[socket.socket]) -> None:
    sock = connect(router.url, sockets)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    elapsed, sent = send_until_closed(sock, request, every=0.05, max_bytes=len(request))
    assert TIMEOUT_S * 0.8 < elapsed < WITHIN_S
    assert sent > 10, "bytes kept arriving: the deadline counts from the connection, not the last byte"
    _, data = wait_closed(sock)
    assert "headers" in expect_408(data)["message"]


def test_trickled_body_gets_a_408(router: Proc, sockets: list[socket.socket]) -> None:
    key = create_key(router.url, ["api"])
    sock = connect(router.url, sockets)
    body = json.dumps({"model": "nope", "input": "x" * 200}).encode()
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    # Pieces closer together than the timeout keep it going: the limit is a gap, not a total.
    started = time.monotonic()
    for i in range(6):
        time.sleep(TIMEOUT_S / 3)
        sock.sendall(body[i : i + 1])
    last_byte = time.monotonic()
    assert last_byte - started > TIMEOUT_S * 1.5
    elapsed, data = wait_closed(sock)  # then the client stalls
    assert elapsed is not None, "a stalled body must be cut off"
    assert time.monotonic() - last_byte > TIMEOUT_S * 0.8
    assert "body" in expect_408(data)["message"]
    still_serves(router.url)


def test_a_body_trickled_inside_the_gap_meets_its_deadline(
    router: Proc, sockets: list[socket.socket]
) -> None:
    """A byte every 0.4 s never pauses long enough for the gap timeout; the whole body's deadline
    ends it all the same."""
    key = create_key(router.url, ["api"])
    sock = connect(router.url, sockets)
    body = json.dumps({"model": "nope", "input": "x" * 200}).encode()
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    started = time.monotonic()
    elapsed, sent = send_until_closed(sock, body, every=TIMEOUT_S * 0.4, max_bytes=len(body))
    assert BODY_DEADLINE_S * 0.9 < elapsed < BODY_DEADLINE_S + WITHIN_S, elapsed
    assert sent >= 5, "bytes kept arriving inside the gap"
    _, data = wait_closed(sock)
    error = expect_408(data)
    assert error["message"] == f"Request timeout: request body not complete within {BODY_DEADLINE_S:g}s"
    assert time.monotonic() - started < BODY_DEADLINE_S + WITHIN_S
    still_serves(router.url)


def test_a_body_in_pieces_with_short_pauses_is_answered(router: Proc, sockets: list[socket.socket]) -> None:
    key = create_key(router.url, ["api"])
    sock = connect(router.url, sockets)
    body = json.dumps({"model": "no-such-model", "input": "hello"}).encode()
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    for piece in (body[:10], body[10:20], body[20:]):
        time.sleep(TIMEOUT_S / 2)
        sock.sendall(piece)
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 404"), head  # the body was read whole and routed
    assert json.loads(body)["error"]["code"] == "model_not_found"


def test_idle_keep_alive_is_closed(router: Proc, sockets: list[socket.socket]) -> None:
    sock = connect(router.url, sockets)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    elapsed, data = wait_closed(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert elapsed is not None and elapsed > TIMEOUT_S * 0.8
    # Blank lines between requests do not keep a connection alive either.
    sock = connect(router.url, sockets)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    elapsed, _ = send_until_closed(sock, b"\r\n" * 100, every=0.05, max_bytes=200)
    assert elapsed < WITHIN_S + TIMEOUT_S


def test_many_slow_clients_at_once_while_serving(router: Proc, sockets: list[socket.socket]) -> None:
    slow = [connect(router.url, sockets) for _ in range(50)]
    for sock in slow:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
    served = 0
    started = time.monotonic()
    while time.monotonic() - started < TIMEOUT_S:
        still_serves(router.url)
        served += 1
    assert served >= 3
    closed = [elapsed for elapsed, _ in wait_all_closed(slow)]
    assert all(c is not None for c in closed), f"{sum(c is None for c in closed)} slow sockets left open"


def test_node_has_the_same_timeouts(
    tmp_path: Path, router: Proc, models_dir: Path, procs: list[Proc], sockets: list[socket.socket]
) -> None:
    env = {f"LLMLB_NODE_{k.removeprefix('LLMLB_')}": v for k, v in ROUTER_ENV.items()}
    node = node_proc(tmp_path, router.url, models_dir, create_key(router.url, ["node"]), env=env)
    procs.append(node)
    node.start().wait_healthy(60)
    idle = connect(node.url, sockets)
    elapsed, data = wait_closed(idle)
    assert elapsed is not None and data == b""
    sock = connect(node.url, sockets)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    elapsed, _ = send_until_closed(sock, request, every=0.05, max_bytes=len(request))
    assert elapsed < WITHIN_S
    big = connect(node.url, sockets)
    big.sendall(HEADS["one header of 200 KB"][:100_000])
    expect_431(wait_closed(big)[1], f"more than {MAX_HEADER_BYTES} bytes")


# --- oversized heads: 64 KiB and 100 header fields at most (the defaults) ----------------------
MAX_HEADER_BYTES = 64 * 1024


def expect_431(data: bytes, says: str) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), data[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_headers_too_large" and error["type"] == "invalid_request_error"
    assert error["message"] == f"Request headers too large: {says}"


HEADS = {
    "one header of 200 KB": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "2000 headers of 100 bytes": b"GET /health HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 90) for i in range(2000))
    + b"\r\n",
    "a URL of 100 KB": b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", list(HEADS))
def test_a_head_of_hundreds_of_kb_is_a_431(router: Proc, sockets: list[socket.socket], case: str) -> None:
    sock = connect(router.url, sockets)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(HEADS[case])  # may be refused before it is all sent: the answer waits
    elapsed, data = wait_closed(sock)
    assert elapsed is not None and elapsed < TIMEOUT_S, "refused at once, not at the header timeout"
    says = "more than 100 header fields" if case.startswith("2000") else f"more than {MAX_HEADER_BYTES} bytes"
    expect_431(data, says)
    still_serves(router.url)


def test_a_header_that_never_ends_is_refused_at_the_limit(router: Proc, sockets: list[socket.socket]) -> None:
    sock = connect(router.url, sockets)
    start = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: "
    sock.sendall(start)
    sent = len(start)
    try:
        for _ in range(70):  # 70 KB of one header value, no end of line
            sock.sendall(b"c" * 1024)
            sent += 1024
    except (BrokenPipeError, ConnectionResetError):
        # The router refused at the limit and closed while more was coming: never before it.
        assert sent >= MAX_HEADER_BYTES - 1024, sent
    elapsed, data = wait_closed(sock)
    assert elapsed is not None and elapsed < TIMEOUT_S
    if data:  # its answer, unless the reset of a close with bytes unread discarded it
        expect_431(data, f"more than {MAX_HEADER_BYTES} bytes")


def test_heads_within_the_limits_are_answered(router: Proc, sockets: list[socket.socket]) -> None:
    cookie = b"Cookie: " + b"s" * 60_000 + b"\r\n"  # a big cookie: 60 KB
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(99))  # with Host: 100 fields
    for head in (
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + cookie,
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + many,
    ):
        sock = connect(router.url, sockets)
        sock.sendall(head + b"\r\n")
        answer, _ = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    sock = connect(router.url, sockets)  # one more field is one too many
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"X-One-More: v\r\n\r\n")
    expect_431(wait_closed(sock)[1], "more than 100 header fields")


def test_a_kept_alive_connection_counts_each_head_afresh(router: Proc, sockets: list[socket.socket]) -> None:
    sock = connect(router.url, sockets)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"d" * 40_000 + b"\r\n\r\n"
    for _ in range(3):  # 120 KB over three requests, 40 KB each
        sock.sendall(head)
        answer, _ = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
