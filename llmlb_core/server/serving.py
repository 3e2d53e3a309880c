"""Running a Litestar app with uvicorn: the listening socket, signals, a drain, a stop on demand.

- The socket is bound (and listening) before the app starts, so a taken port is one clean line
  (:class:`ListenError`, ``llmlb: port 8080 is in use: ...``, exit 2) and nothing logs "ready"
  for a server that never listened.
- Signals are logged when they arrive, whatever runs meanwhile. The first SIGTERM of a server
  with a ``drain`` runs it (finish work, take no new) and then exits; without one, and for
  SIGINT (Ctrl-C), uvicorn's graceful shutdown finishes the requests in progress. A second
  signal exits at once (exit status 128 + signal), abandoning what still runs: a generation on
  a worker thread cannot be interrupted, so nothing short of ending the process stops it.
- An app may put a ``() -> str | None`` in its state under :data:`STOP_WHEN` (the node does):
  it is polled while serving, and when it returns a message (e.g. the router refused the node's
  key), the server shuts down and :func:`run` raises :class:`ServeStopped`, which the CLI
  prints as one line (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

from llmlb_core.config.settings import SettingsError
from llmlb_core.server.memory import release_large_frees
from llmlb_core.server.slow_clients import ClientLimits, protocol_class

log = logging.getLogger("llmlb.serving")

BACKLOG = 2048
# The app state key of the app's stop condition (see the module docstring).
STOP_WHEN = "llmlb_stop_when"


class ListenError(SettingsError):
    """The server cannot listen where it was told to (port in use, address not on this host)."""


class ServeStopped(SettingsError):
    """The server stopped by itself for a reason the operator must act on (``stop_when``)."""


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for every address of ``host`` (as uvicorn's own bind would
    give), or :class:`ListenError` saying what to do."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); check --host"
        ) from None
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} is in use: pick another with --port") from None
        if exc.errno == errno.EACCES:
            raise ListenError(
                f"no permission to listen on port {port}: pick one above 1023 with --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenError(f"{host} is not an address of this host: check --host") from None
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the signal handling, drain and stop described in the module."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]] | None,
        stop_when: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._stop_when = stop_when
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_reason: str | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            scheme = "https" if self.config.is_ssl else "http"
            for sock in sockets or ():
                address = sock.getsockname()
                host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
                log.info("listening on %s://%s:%d", scheme, host, address[1])

    async def on_tick(self, counter: int) -> bool:
        if self._stop_when is not None and self.stop_reason is None:
            self.stop_reason = self._stop_when()
            if self.stop_reason is not None:
                self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self._signalled:
            log.warning("second %s: exiting now; requests in progress are abandoned", name)
            _flush_logs()
            os._exit(128 + sig)
        self._signalled = True
        if self._drain is not None and sig == signal.SIGTERM and self._loop is not None:
            log.info(
                "SIGTERM: draining (finishing current work, taking no new work); send it again to exit now"
            )
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))  # type: ignore[union-attr]
            return
        log.info(
            "%s: shutting down after the requests in progress; %s again to exit now",
            name,
            "Ctrl-C" if sig == signal.SIGINT else name,
        )
        super().handle_exit(sig, frame)

    async def _drain_then_exit(self) -> None:
        try:
            assert self._drain is not None
            await self._drain()
        except Exception:
            log.exception("drain failed; exiting anyway")
        self.should_exit = True


def run(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    drain: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout_s: int = 30,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    client_limits: ClientLimits | None = None,
) -> None:
    """Serve ``app`` until a signal (or its :data:`STOP_WHEN`) ends it. Raises
    :class:`ListenError` when the port cannot be had, :class:`ServeStopped` when the app's
    stop condition stopped it."""
    release_large_frees()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        http=protocol_class(client_limits or ClientLimits()),  # timeouts, header limits
        ws="none",
        log_config=None,
        ssl_certfile=ssl_certfile,  # HTTPS when given (checked by llmlb_core.server.tls.check_server_cert)
        ssl_keyfile=ssl_keyfile,
    )
    sockets = listen_sockets(host, port)
    state = getattr(app, "state", None)
    stop_when = state.get(STOP_WHEN) if state is not None else None
    server = DrainingServer(config, drain, stop_when)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after its graceful shutdown; the shutdown is done, so end
        # quietly (one log line) instead of printing a traceback.
        log.info("stopped (interrupt)")
    finally:
        for sock in sockets:
            sock.close()
    if server.stop_reason is not None:
        raise ServeStopped(server.stop_reason)
