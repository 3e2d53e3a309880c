"""A real nginx in front of router replicas for the tests: :class:`NginxBalancer` writes a config
that balances over a list of upstream ``host:port`` routers into a temporary folder, runs nginx
in the foreground on a free port of 127.0.0.1, and always stops it (SIGQUIT, then SIGKILL) and
removes the folder, even after a failure.

The config is the one the deployment notes give: round robin over the routers, a router that
refuses or times out is skipped for ``fail_timeout`` and the request goes to the next one
(``proxy_next_upstream error timeout``), keep-alive connections to the routers, no response
buffering (event streams pass through as they come), 80 MB bodies (image uploads). Every path
nginx writes (temp files, pid) is inside the folder, and its log goes to a file there.

As root (the tests and CI run as root) the workers run as root too (``user root root;``): the
default ``nobody`` could not use the temporary folder, which only its owner may enter.

The binary: ``LLMLB_TEST_NGINX`` (a path), else ``nginx`` on PATH, else /usr/sbin/nginx.
Missing: the tests skip saying how to install it, except under CI, where they fail (``make
test`` installs Debian's ``nginx``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from bench._common import free_port
from tests.support.ci import missing
from tests.support.daemons import halt, log_tail

INSTALL = "apt-get install -y nginx (or run `make test`, which installs it)"
SBIN_NGINX = Path("/usr/sbin/nginx")


def nginx_bin() -> Path | None:
    """The ``nginx`` binary; None when it is not installed."""
    if given := os.environ.get("LLMLB_TEST_NGINX"):
        return Path(given)
    if found := shutil.which("nginx"):
        return Path(found)
    return SBIN_NGINX if SBIN_NGINX.exists() else None


def require_nginx_bin() -> Path:
    """:func:`nginx_bin`, or skip (fail under CI) naming how to install it."""
    binary = nginx_bin()
    if binary is None or not os.access(binary, os.X_OK):
        reason = f"nginx is missing: {INSTALL}"
        missing(reason, "the nginx tests")
    return binary


def nginx_config(
    root: Path, port: int, upstreams: Sequence[str], *, max_fails: int = 1, fail_timeout: str = "2s"
) -> str:
    """The config for nginx on 127.0.0.1:``port`` in front of ``upstreams`` (``host:port``),
    every path it writes under ``root``. ``daemon``, ``pid`` and ``error_log`` are given on the
    command line."""
    servers = "".join(
        f"        server {address} max_fails={max_fails} fail_timeout={fail_timeout};\n"
        for address in upstreams
    )
    user = ""
    if os.geteuid() == 0:
        group = grp.getgrgid(os.getegid()).gr_name
        user = f"user root {group};\n"
    return f"""{user}worker_processes 1;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream routers {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 80m;
        location / {{
            proxy_pass http://routers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class NginxBalancer:
    """nginx balancing over ``upstreams`` (``"127.0.0.1:PORT"`` each), as a context manager:
    started on entering (``url`` then answers), stopped and removed on leaving."""

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        max_fails: int = 1,
        fail_timeout: str = "2s",
        binary: Path | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("NginxBalancer needs at least one upstream")
        self.upstreams = list(upstreams)
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.binary = binary
        self.root: Path | None = None
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, where clients reach the routers."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        assert self.root is not None, "nginx not started"
        return self.root / "nginx.conf"

    def __enter__(self) -> NginxBalancer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> NginxBalancer:
        """Start on a free port (another one when the port was taken in between)."""
        binary = self.binary or require_nginx_bin()
        self.root = Path(tempfile.mkdtemp(prefix="llmlb-nginx-"))
        try:
            for attempt in range(5):
                self.port = free_port()
                self.config_path.write_text(
                    nginx_config(
                        self.root, self.port, self.upstreams, max_fails=self.max_fails,
                        fail_timeout=self.fail_timeout,
                    )
                )  # fmt: skip
                try:
                    self._spawn(binary)
                    return self
                except RuntimeError:
                    if attempt == 4:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, binary: Path, timeout: float = 20) -> None:
        assert self.root is not None
        self._log = open(self.root / "nginx.log", "ab")  # noqa: SIM115 - closed in _halt()
        globals_ = f"daemon off; pid {self.root}/nginx.pid; error_log stderr;"
        self.popen = subprocess.Popen(
            # -e: the log nginx writes before it reads the config (else /var/log/nginx/error.log)
            [str(binary), "-p", f"{self.root}/", "-e", "stderr", "-c", str(self.config_path), "-g", globals_],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                code = self.popen.returncode
                self._halt()
                raise RuntimeError(f"nginx exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        self._halt()
        raise RuntimeError(f"nginx did not accept connections within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what nginx logged (its error log: upstream failures among them)."""
        return log_tail(None if self.root is None else self.root / "nginx.log", chars)

    def _halt(self, timeout: float = 10) -> None:
        """SIGQUIT (graceful: requests in flight finish), then SIGKILL to its session (master and
        workers) after ``timeout`` seconds."""
        popen, self.popen = self.popen, None
        halt(popen, signal.SIGQUIT, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop nginx and remove its folder."""
        with contextlib.suppress(Exception):
            self._halt()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
