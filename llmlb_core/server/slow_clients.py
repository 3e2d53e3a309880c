"""Limits for slow, idle and oversized clients (slowloris), on top of uvicorn's httptools protocol.

uvicorn has no limit on how long a client may take to send its request headers or body, nor on
how large the headers may be, and its keep-alive timer is cancelled by any byte, so a client
trickling bytes holds a connection forever. :func:`protocol_class` returns a subclass of its
HTTP protocol with one timer per connection, running only while the server waits on the client:

- **headers**: from the moment a connection opens (a client that never sends a byte is covered),
  or from the first bytes of a later request on a kept-alive connection, until the request's
  headers are complete: at most ``header_s`` in total;
- **body**: while a request body is being received, a pause longer than ``body_gap_s`` between
  two pieces, or more than ``body_total_s`` in all (a body trickled in pieces just inside the
  gap). Time when the server itself stopped reading (the app is not consuming the body yet, or
  the client waits for ``100 Continue``) does not count against the client;
- **idle**: a kept-alive connection with no new request for ``keep_alive_s`` (uvicorn's own
  keep-alive timer, set to it; this class covers the cases where bytes cancelled that timer).

A connection that runs out of time while sending a request gets a 408 with an OpenAI-shaped body
when no answer to that request has started, and is closed; an idle one is just closed. The
common path costs one timer per new connection (cancelled when its first headers are in) and a
clock read per body read; a request without a body costs nothing more.

A request's head (request line and headers) may have at most ``max_header_bytes`` and
``max_headers`` header fields: more is a 431 with an OpenAI-shaped body, and the connection
closes. The bytes are counted as they arrive, so a header that never ends is refused as soon as
it passes the limit (not held until the header timeout); the count costs a few additions per
header. (A head that starts in the same read as the end of a pipelined request's body counts
that read whole: pipelining clients are rare, and it errs on the side of refusing.)
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("llmlb.serving")


class HasClientLimits(Protocol):
    """Settings objects that carry the three client timeouts (router and node settings)."""

    client_header_timeout_s: float
    client_body_timeout_s: float
    client_body_deadline_s: float
    client_keep_alive_s: float
    client_max_header_bytes: int
    client_max_headers: int


@dataclass(frozen=True)
class ClientLimits:
    header_s: float = 10.0
    body_gap_s: float = 30.0
    body_total_s: float = 600.0
    keep_alive_s: float = 15.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100

    @classmethod
    def of(cls, settings: HasClientLimits) -> ClientLimits:
        return cls(
            header_s=settings.client_header_timeout_s,
            body_gap_s=settings.client_body_timeout_s,
            body_total_s=settings.client_body_deadline_s,
            keep_alive_s=settings.client_keep_alive_s,
            max_header_bytes=settings.client_max_header_bytes,
            max_headers=settings.client_max_headers,
        )


class _Phase(enum.Enum):
    HEADERS = "headers"  # waiting for (the rest of) a request's headers
    BODY = "body"  # waiting for (the rest of) a request's body
    SERVING = "serving"  # the request is in; the app is answering it
    IDLE = "idle"  # a kept-alive connection between requests


class _TimedFlow(FlowControl):
    """uvicorn's flow control, remembering when reading last resumed (the client's clock restarts)
    and for how long in all it was paused (the server's time, not the client's)."""

    resumed_at = 0.0
    paused_s = 0.0
    _paused_at = 0.0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._paused_at = time.monotonic()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.resumed_at = time.monotonic()
            self.paused_s += self.resumed_at - self._paused_at
        super().resume_reading()


def _error_response(status: int, message: str, *, type: str, code: str) -> bytes:
    """An OpenAI-shaped error answer that closes the connection, written by the protocol itself
    (no app runs for it)."""
    error = {"message": message, "type": type, "param": None, "code": code}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _timeout_response(why: str) -> bytes:
    return _error_response(408, f"Request timeout: {why}", type="timeout_error", code="request_timeout")


def _head_too_large_response(why: str) -> bytes:
    message = f"Request headers too large: {why}"
    return _error_response(431, message, type="invalid_request_error", code="request_headers_too_large")


class SlowClientProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header, body and keep-alive timeouts (see the module docstring)."""

    limits = ClientLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_s  # type: ignore[assignment]  # a delay
        self._phase = _Phase.HEADERS
        self._timer: asyncio.TimerHandle | None = None
        self._last_chunk = 0.0
        # When the client started sending the body (None: not yet), and the flow's paused time then.
        self._body_started: float | None = None
        self._body_paused_s = 0.0
        self._got_bytes = False
        # The request head being read: its bytes as parsed (the URL and every complete header),
        # the bytes of the reads that left it unfinished, its header fields, why it is refused.
        self._in_head = False
        self._head_bytes = 0
        self._head_reads = 0
        self._header_count = 0
        self._head_refused: str | None = None

    # --- the one timer -------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase is _Phase.IDLE:
            self.transport.close()
        elif self._phase is _Phase.HEADERS:
            self._give_up(f"request headers not complete within {self.limits.header_s:g}s")
        elif self._phase is _Phase.BODY:
            gap = self.limits.body_gap_s
            if self.flow.read_paused or self._awaiting_100_continue():
                self._arm(gap)  # the server is not reading: not the client's time
                return
            assert isinstance(self.flow, _TimedFlow)
            now = time.monotonic()
            gap_left = max(self._last_chunk, self.flow.resumed_at) + gap - now
            total_left = self._body_time_left(now)
            if total_left <= 0:
                self._give_up(f"request body not complete within {self.limits.body_total_s:g}s")
            elif gap_left <= 0:
                self._give_up(f"no request body data for {gap:g}s")
            else:
                self._arm(min(gap_left, total_left))

    def _awaiting_100_continue(self) -> bool:
        return self.cycle is not None and self.cycle.waiting_for_100_continue

    def _body_time_left(self, now: float) -> float:
        """What is left of ``body_total_s`` for the body being read (the server's pauses not
        counted)."""
        if self._body_started is None:
            return self.limits.body_total_s
        assert isinstance(self.flow, _TimedFlow)
        used = now - self._body_started - (self.flow.paused_s - self._body_paused_s)
        return self.limits.body_total_s - used

    def _give_up(self, why: str) -> None:
        if not self._got_bytes:  # opened and never used (a preconnect, or an idle-socket attack)
            log.debug("closing a connection from %s that sent nothing", self.client)
            self.transport.close()
            return
        log.info("closing a slow client connection from %s: %s", self.client, why)
        cycle = self.cycle
        if self._phase is _Phase.HEADERS:
            if cycle is None or cycle.response_complete:
                self.transport.write(_timeout_response(why))
        elif cycle is not None and not cycle.response_started:
            # The app is still reading this body: it sees a disconnect, and its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_timeout_response(why))
        self.transport.close()

    # --- the size of a request's head ---------------------------------------------------
    def _check_head_size(self, size: int) -> None:
        if size > self.limits.max_header_bytes and self._head_refused is None:
            self._head_refused = f"more than {self.limits.max_header_bytes} bytes"

    def _refuse_head(self, why: str) -> None:
        log.info("refusing a request from %s: its headers have %s", self.client, why)
        self._disarm()
        if self.cycle is None or self.cycle.response_complete:  # else mid-answer: just close
            self.transport.write(_head_too_large_response(why))
        self.transport.close()

    # --- uvicorn protocol hooks ----------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP (uvicorn answers them in plain text): an OpenAI-shaped 400."""
        self._disarm()
        message = f"{msg.rstrip('.')}: the request line or a header is not valid HTTP/1.1"
        self.transport.write(
            _error_response(400, message, type="invalid_request_error", code="invalid_http_request")
        )
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _TimedFlow(transport)
        self._arm(self.limits.header_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._phase is _Phase.IDLE:
            self._disarm()
            self._phase = _Phase.HEADERS  # the next request: its clock runs from its first bytes
        super().data_received(data)
        if self._in_head:  # not complete yet: its unfinished header is buffered, unparsed
            self._head_reads += len(data)
            self._check_head_size(self._head_reads)
        if self._head_refused is not None:
            if not self.transport.is_closing():
                self._refuse_head(self._head_refused)
            return
        if self._phase is _Phase.BODY:
            now = self._last_chunk = time.monotonic()
            if self._body_started is None and not self._awaiting_100_continue():
                assert isinstance(self.flow, _TimedFlow)
                self._body_started, self._body_paused_s = now, self.flow.paused_s
            if self._timer is None:
                self._arm(min(self.limits.body_gap_s, self._body_time_left(now)))
        elif self._phase is _Phase.HEADERS and self._timer is None and not self.transport.is_closing():
            self._arm(self.limits.header_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._head_reads = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_bytes += len(url)
        self._check_head_size(self._head_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._check_head_size(self._head_bytes)
        self._header_count += 1
        if self._header_count > self.limits.max_headers and self._head_refused is None:
            self._head_refused = f"more than {self.limits.max_headers} header fields"

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_refused is not None:
            return  # no request for the app: data_received answers 431
        self._disarm()
        self._phase = _Phase.BODY
        self._body_started = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._head_refused is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_refused is not None:
            return
        self._disarm()
        super().on_message_complete()
        if self.cycle.response_complete:
            # Answered before its body was in (a 401, a 413): the body's bytes cancelled uvicorn's
            # keep-alive timer, so this one takes its place.
            self._phase = _Phase.IDLE
            self._arm(self.limits.keep_alive_s)
        else:
            self._phase = _Phase.SERVING

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase is _Phase.SERVING and self.timeout_keep_alive_task is not None:
            self._phase = _Phase.IDLE  # uvicorn's keep-alive timer runs until the next bytes


def protocol_class(limits: ClientLimits) -> type[SlowClientProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""

    class Configured(SlowClientProtocol):
        pass

    Configured.limits = limits
    return Configured
