"""Helpers shared by the text and audio tests: loopback backends registered as endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key, wait_until
from tests.support.text_backends import BackendState, build_backend

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
UPSTREAM_KEY = "sk-upstream-secret-7f3c9a1e5b"
TEXT_MODELS = ["tiny-chat", "tiny-embed", "fail-400", "fail-500", "text-400", "flaky"]
AUDIO_MODELS = ["whisper-tiny", "tts-tiny"]


@dataclass
class Backend:
    state: BackendState
    server: ThreadServer

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def backend(
    name: str, models: list[str], *, api_key: str | None = UPSTREAM_KEY, port: int | None = None
) -> Iterator[Backend]:
    state = BackendState(name=name, models=models, api_key=api_key)
    server = ThreadServer(build_backend(state), port=port).start()
    try:
        yield Backend(state, server)
    finally:
        server.stop()


def register_endpoint(router_url: str, name: str, url: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{router_url}/v0/endpoints", json={"name": name, "url": url, **extra}, headers=ADMIN, timeout=10
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def endpoint_view(router_url: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{router_url}/v0/endpoints/{name}", headers=ADMIN, timeout=10)
    response.raise_for_status()
    return dict(response.json())


def wait_endpoint(router_url: str, name: str, status: str = "online", timeout: float = 15) -> None:
    wait_until(lambda: endpoint_view(router_url, name)["status"] == status, timeout, f"{name} {status}")


@dataclass
class TextSystem:
    router: ThreadServer
    backend: Backend
    api_key: str

    @property
    def url(self) -> str:
        return self.router.url

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, **kwargs)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


@contextmanager
def text_system(
    tmp: Path, models: list[str], endpoint: dict[str, Any] | None = None, **settings: Any
) -> Iterator[TextSystem]:
    """A router (in-process, real loopback HTTP) with one loopback backend as endpoint ``up``
    (``endpoint``: more fields for its registration)."""
    with backend("up", models) as up:
        router = start_router(
            tmp / "router-data", **{"endpoint_check_interval_s": 0.3, "node_timeout_s": 3, **settings}
        )
        try:
            register_endpoint(router.url, "up", up.url, api_key=UPSTREAM_KEY, **(endpoint or {}))
            wait_endpoint(router.url, "up")
            yield TextSystem(router, up, create_key(router.url, ["api"], name="client"))
        finally:
            router.stop()
