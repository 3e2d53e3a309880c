"""Running a Litestar app with uvicorn, with an optional graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

from llmlb_core.memory import release_large_frees
from llmlb_core.slow_clients import ClientTimeouts, protocol_class

log = logging.getLogger("llmlb.serving")


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM, run ``drain()`` (finish work, stop taking new) before exiting.

    A second signal, or SIGINT, exits at once the usual uvicorn way.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]] | None) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None or sig != signal.SIGTERM or self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("SIGTERM: draining (finishing current work, taking no new work)")
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))  # type: ignore[union-attr]

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
    client_timeouts: ClientTimeouts | None = None,
) -> None:
    release_large_frees()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        http=protocol_class(client_timeouts or ClientTimeouts()),  # header, body and idle timeouts
        ws="none",
        log_config=None,
        ssl_certfile=ssl_certfile,  # HTTPS when given (checked by llmlb_core.tls.check_server_cert)
        ssl_keyfile=ssl_keyfile,
    )
    try:
        DrainingServer(config, drain).run()
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after its graceful shutdown; the shutdown is done, so end
        # quietly (one log line) instead of printing a traceback.
        log.info("stopped (interrupt)")
