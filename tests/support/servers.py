"""Start real servers on loopback for tests: in-process (uvicorn in a thread) or as processes.

Everything started here is stopped by the fixtures that use it, even when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn

from bench._common import ServerProcess, free_port, wait_until

ADMIN_KEY = "sk-llmlb-test-admin-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


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


class Proc(ServerProcess):
    """A server process (router or node) started with ``python -m llmlb_core.cli ARGS`` (the
    benchmarks' :class:`bench._common.ServerProcess`, with the test's environment ``env``)."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, url: str, *, any_port: bool = False
    ) -> None:
        super().__init__(args[0], "llmlb_core.cli", args, log_path, url, env=env)
        # The port was picked free here, not asked for: another may do if it is taken by the
        # time the process binds it (another xdist worker's server can take it in between).
        self.any_port = any_port
        self._log_start = 0

    def start(self) -> Proc:
        self._log_start = len(self.log())
        super().start()
        return self

    def wait_healthy(self, timeout: float = 30) -> Proc:
        for attempt in range(3):
            try:
                super().wait_healthy(timeout)
                return self
            except RuntimeError:
                taken = "is in use: pick another with --port" in self.log()[self._log_start :]
                if not (self.any_port and taken) or attempt == 2:
                    raise
                self._move_to_another_port()
        return self

    def _move_to_another_port(self) -> None:
        index = self.args.index("--port") + 1
        port = free_port()
        self.args[index] = str(port)
        self.url = f"{self.url.rsplit(':', 1)[0]}:{port}"
        self.stop()
        self.start()

    def wait_online(self, router_url: str, timeout: float = 30) -> Proc:
        """A node process: wait until ``router_url`` lists it online (by its ``--name``)."""
        name = self.args[self.args.index("--name") + 1]
        wait_until(lambda: node_status(router_url, name) == "online", timeout, f"{name} online")
        return self

    def stop(self, timeout: float = 15) -> int | None:
        return super().stop(timeout)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMLB_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def router_proc(
    tmp: Path, *, port: int | None = None, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> Proc:
    any_port = port is None
    port = port or free_port()
    data_dir = data_dir or tmp / "router-data"
    return Proc(
        args=["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
        env=base_env(LLMLB_ADMIN_KEY=ADMIN_KEY, **(env or {})),
        log_path=tmp / f"router-{port}.log",
        url=f"http://127.0.0.1:{port}",
        any_port=any_port,
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
    any_port = port is None
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
        any_port=any_port,
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
