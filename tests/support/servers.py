"""Start real servers on loopback for tests: in-process (uvicorn in a thread) or as processes.

Everything started here is stopped by the fixtures that use it, even when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn

ADMIN_KEY = "sk-llmlb-test-admin-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Server(Protocol):
    """A test server on a loopback port (:class:`ThreadServer`, ``raw_http.RawHttpServer``)."""

    @property
    def url(self) -> str: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...


class ThreadServer:
    """A uvicorn server for an ASGI app, on a loopback port, in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            log_config=None,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, f"server on {self.url}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=10)


@dataclass
class Proc:
    """A server process (router or node) started with ``python -m llmlb_core.cli``."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    url: str
    popen: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "llmlb_core.cli", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        return self

    def wait_healthy(self, timeout: float = 30) -> Proc:
        def ok() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited with {self.popen.returncode}:\n{self.log()}")
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        wait_until(ok, timeout, f"{self.url}/health")
        return self

    def wait_online(self, router_url: str, timeout: float = 30) -> Proc:
        """A node process: wait until ``router_url`` lists it online (by its ``--name``)."""
        name = self.args[self.args.index("--name") + 1]
        wait_until(lambda: node_status(router_url, name) == "online", timeout, f"{name} online")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMLB_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def router_proc(
    tmp: Path, *, port: int | None = None, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> Proc:
    port = port or free_port()
    data_dir = data_dir or tmp / "router-data"
    return Proc(
        args=["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
        env=base_env(LLMLB_ADMIN_KEY=ADMIN_KEY, **(env or {})),
        log_path=tmp / f"router-{port}.log",
        url=f"http://127.0.0.1:{port}",
    )


def node_proc(
    tmp: Path,
    router_url: str,
    models_dir: Path,
    api_key: str,
    *,
    port: int | None = None,
    name: str | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    port = port or free_port()
    return Proc(
        args=[
            "node",
            "--router",
            router_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models-dir",
            str(models_dir),
            "--api-key",
            api_key,
            "--name",
            name or f"node-{port}",
            "--heartbeat-interval",
            "0.3",
            *(extra or []),
        ],
        env=base_env(**(env or {})),
        log_path=tmp / f"node-{port}.log",
        url=f"http://127.0.0.1:{port}",
    )


def create_key(router_url: str, scopes: list[str], name: str = "test", **extra: Any) -> str:
    response = httpx.post(
        f"{router_url}/v0/keys",
        json={"name": name, "scopes": scopes, **extra},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["key"])


def admin_get(router_url: str, path: str) -> Any:
    response = httpx.get(f"{router_url}{path}", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def node_status(router_url: str, name: str) -> str | None:
    for node in admin_get(router_url, "/v0/nodes")["data"]:
        if node["name"] == name:
            return str(node["status"])
    return None
