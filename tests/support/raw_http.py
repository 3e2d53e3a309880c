"""A peer that speaks broken HTTP on purpose: a raw asyncio socket server on loopback.

A well-behaved HTTP server (uvicorn, aiohttp) cannot send two different ``content-length``
headers, a status line ``HTTP/9.9 abc def``, a 5 MB header or a chunk size that is not hex: this
one writes exactly the bytes a test gives it. It reads each request (its head and its
``content-length`` or chunked body) and answers with the :class:`RawAnswer` set for the path in
``answers`` (or ``default``): a list of steps, each bytes written as they are, a pause or a reset
(the connection aborted: RST); after the last step the connection is closed (FIN), so each
connection carries one request. It runs its own event loop in a thread, so a
sync test can use it beside real processes and an async one beside its own loop;
:meth:`RawHttpServer.stop` closes every connection it holds.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RESET = "reset"


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = bytes | Pause | str  # str: RESET


@dataclass
class RawAnswer:
    """The steps of one answer; after the last one the connection is closed (FIN)."""

    steps: list[Step]

    @classmethod
    def head_then(cls, head: bytes, *steps: Step) -> RawAnswer:
        return cls([head, *steps])


def head(status: str = "200 OK", *headers: str, content_type: str = "application/json") -> bytes:
    """A response head: the status line, ``content-type``, ``connection: close`` (the answer
    ends the connection) and ``headers`` as given."""
    lines = [f"HTTP/1.1 {status}", f"content-type: {content_type}", "connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def json_body(data: Any, *headers: str, status: str = "200 OK") -> bytes:
    """A whole well-formed JSON answer (head and body)."""
    body = json.dumps(data).encode()
    return head(status, f"content-length: {len(body)}", *headers) + body


@dataclass(frozen=True)
class RawRequest:
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class RawHttpServer:
    answers: dict[str, RawAnswer | Callable[[str], RawAnswer]] = field(default_factory=dict)
    default: RawAnswer = field(
        default_factory=lambda: RawAnswer(
            [json_body({"error": {"message": "no answer set"}}, status="404 X")]
        )
    )
    # The requests read, in order.
    requests: list[RawRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawHttpServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection: its answer ends with the connection."""
        self._writers.add(writer)
        try:
            request = await _read_request(reader)
            if request is not None:
                self.requests.append(request)
                planned = self.answers.get(request.path, self.default)
                await _write(writer, planned(request.path) if callable(planned) else planned)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away (e.g. after an 8 KiB header line)
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()


async def _read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """Read one request (None: the peer closed the connection first)."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines[1:] if line)
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return RawRequest(lines[0].split(" ")[1], headers)


async def _write(writer: asyncio.StreamWriter, answer: RawAnswer) -> None:
    for step in answer.steps:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        elif step == RESET:
            writer.transport.abort()
            return
        else:
            assert isinstance(step, bytes)
            writer.write(step)
            await writer.drain()
