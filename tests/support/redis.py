"""A real, private Redis server for the tests: ``redis-server`` on a free port of 127.0.0.1, no
persistence (``--save "" --appendonly no``), its working folder a temporary one, and always
stopped and removed at the end, even after a failure.

Each pytest(-xdist) worker starts its own server (a session fixture is per worker), so a test
may flush the whole server, or stop it (:meth:`RedisServer.down`, for the Redis-down tests) and
start it again (:meth:`RedisServer.up`, same port, empty) without touching another worker's.
Redis has no root refusal: as root (the tests and CI run as root) it runs as root.

The binary: ``LLMLB_TEST_REDIS_SERVER`` (a path), else ``redis-server`` on PATH. Missing: the
tests skip saying how to install it, except under CI, where they fail (``make test`` installs
Debian's ``redis-server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from bench._common import free_port
from tests.support.ci import missing
from tests.support.daemons import halt, log_tail

INSTALL = "apt-get install -y redis-server (or run `make test`, which installs it)"


def redis_bin() -> Path | None:
    """The ``redis-server`` binary; None when it is not installed."""
    if given := os.environ.get("LLMLB_TEST_REDIS_SERVER"):
        return Path(given)
    found = shutil.which("redis-server")
    return Path(found) if found else None


def require_redis_bin() -> Path:
    """:func:`redis_bin`, or skip (fail under CI) naming how to install it."""
    binary = redis_bin()
    if binary is None or not os.access(binary, os.X_OK):
        reason = f"redis-server is missing: {INSTALL}"
        missing(reason, "the Redis tests")
    return binary


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command (RESP) to the server on ``port``; its reply's first line (``+PONG``,
    ``+OK``, ``-ERR ...``). OSError when nothing answers."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"redis on port {port} closed the connection")
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class RedisServer:
    """One private ``redis-server``: :meth:`start` once, then :meth:`down` / :meth:`up` at will,
    :meth:`stop` at the end (the fixtures do it)."""

    def __init__(self, binary: Path, extra: Sequence[str] = ()) -> None:
        self.binary = binary
        self.extra = list(extra)  # more redis-server options, e.g. --tls-port
        self.root = Path(tempfile.mkdtemp(prefix="llmlb-redis-"))
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, the URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> RedisServer:
        """Start on a free port (another one when the port was taken in between)."""
        for attempt in range(5):
            self.port = free_port()
            try:
                self._spawn()
                return self
            except RuntimeError:
                if attempt == 4:
                    raise
        return self

    def _spawn(self, timeout: float = 20) -> None:
        self._log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - closed in _halt()
        self.popen = subprocess.Popen(
            [
                str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no", "--logfile", "",
                *self.extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                code = self.popen.returncode
                self._halt()
                raise RuntimeError(f"redis-server exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if command(self.port, "PING", timeout=0.5) == b"+PONG":
                    return
            time.sleep(0.05)
        self._halt()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self.log_tail()}")

    def down(self) -> None:
        """Stop the server (every connection cut). The port stays this server's: :meth:`up`
        starts it again there."""
        self._halt()

    def up(self) -> None:
        """Start a server stopped by :meth:`down` again, on the same port, with an empty
        database (nothing is persisted). Nothing happens when it is running."""
        if self.running:
            return
        self._spawn()

    def flush(self) -> None:
        """Empty every database of the server (``FLUSHALL``)."""
        reply = command(self.port, "FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.root / "redis.log", chars)

    def _halt(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL to its session after ``timeout`` seconds."""
        popen, self.popen = self.popen, None
        halt(popen, signal.SIGTERM, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop it and remove its folder."""
        with contextlib.suppress(Exception):
            self._halt()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """A started server, stopped and removed on leaving (whatever happened)."""
    server = RedisServer(require_redis_bin())
    try:
        yield server.start()
    finally:
        server.stop()
