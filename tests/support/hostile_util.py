"""Helpers for the hostile-input, hostile-node and fuzz tests (issue 8): what an OpenAI error
is, raw multipart bodies, a whole system of real processes to attack, and a router beside a
good node where rogue nodes come and go (issue 17)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.fake_node import FakeNode, Planned
from tests.support.servers import ADMIN_KEY, Proc, Server, admin_get, create_key, node_proc, router_proc
from tests.support.text_fixtures import UPSTREAM_KEY, Backend, backend, register_endpoint, wait_endpoint

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# Served by the loopback OpenAI-compatible backend (registered as an endpoint).
BACKEND_MODELS = ["tiny-chat", "tiny-embed", "whisper-tiny", "tts-tiny"]
# Every JSON route of the router, and the scope of the key that may call it.
JSON_ROUTES = [
    ("/v0/keys", "admin"),
    ("/v0/models", "admin"),
    ("/v0/endpoints", "admin"),
    ("/v0/nodes/register", "node"),
    ("/v0/nodes/heartbeat", "node"),
    ("/v1/chat/completions", "api"),
    ("/v1/completions", "api"),
    ("/v1/embeddings", "api"),
    ("/v1/audio/speech", "api"),
    ("/v1/images/generations", "api"),
]


def openai_error_problem(response: httpx.Response) -> str | None:
    """Why an error response is not OpenAI-shaped, or None when it is."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content type {response.headers.get('content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    error = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"not {{'error': {{message, type, param, code}}}}: {body!r:.200}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return f"message/type: {error!r:.200}"
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return f"param/code: {error!r:.200}"
    return None


def expect_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    problem = openai_error_problem(response)
    assert problem is None, problem
    error: dict[str, Any] = response.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


BOUNDARY = b"hostile-boundary-0123"


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = BOUNDARY) -> tuple[bytes, str]:
    """A raw multipart body: each part is (header lines, content), sent exactly as given."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def field(name: str, value: str) -> tuple[bytes, bytes]:
    return f'Content-Disposition: form-data; name="{name}"'.encode(), value.encode()


@dataclass
class FullSystem:
    """A router process, a StableDiffusion node process serving ``demo``, and a loopback
    OpenAI-compatible backend (``BACKEND_MODELS``) registered as an endpoint."""

    router: Proc
    node: Proc
    backend: Backend
    api_key: str
    node_key: str

    @property
    def url(self) -> str:
        return self.router.url

    def auth(self, scope: str) -> dict[str, str]:
        key = {"api": self.api_key, "node": self.node_key, "admin": ADMIN_KEY}[scope]
        return {"authorization": f"Bearer {key}"}

    def post(self, path: str, content: bytes, content_type: str, scope: str = "api") -> httpx.Response:
        return httpx.post(
            f"{self.url}{path}",
            content=content,
            headers={**self.auth(scope), "content-type": content_type},
            timeout=60,
        )


@contextmanager
def full_system(tmp: Path, models_dir: Path, env: dict[str, str] | None = None) -> Iterator[FullSystem]:
    started: list[Proc] = []
    try:
        settings = {"LLMLB_NODE_TIMEOUT_S": "3", "LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.5", **(env or {})}
        router = router_proc(tmp, env=settings)
        started.append(router)
        router.start().wait_healthy()
        node_key = create_key(router.url, ["node"], name="node")
        node = node_proc(tmp, router.url, models_dir, node_key, name="sd-hostile", extra=["--threads", "2"])
        started.append(node)
        node.start().wait_healthy(60).wait_online(router.url)
        with backend("up", BACKEND_MODELS) as up:
            register_endpoint(router.url, "up", up.url, api_key=UPSTREAM_KEY)
            wait_endpoint(router.url, "up")
            yield FullSystem(router, node, up, create_key(router.url, ["api"], name="client"), node_key)
    finally:
        for proc in reversed(started):
            proc.stop()


@dataclass
class RogueArena:
    """A router process beside a good node (``good``, a :class:`FakeNode`), where each test
    brings in a fresh rogue node (:meth:`rogue`), never used before: the balancer, which takes
    turns, sends it one of the next requests."""

    router: Proc
    good: FakeNode
    api_key: str
    node_key: str
    numbers: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def node_view(self, node_id: str) -> dict[str, Any]:
        return next(n for n in admin_get(self.router.url, "/v0/nodes")["data"] if n["id"] == node_id)

    @contextmanager
    def rogue(
        self, models: Callable[[str], list[dict[str, Any]]], *, http: Server | None = None
    ) -> Iterator[tuple[FakeNode, str]]:
        """A rogue node (and the suffix of its own models' ids): it serves ``models("")`` beside
        the good node and ``models(suffix)`` alone; stopped (its server too) whatever happens."""
        suffix = f"-rogue-{next(self.numbers)}"
        node = FakeNode(self.router.url, self.node_key, suffix[1:], models("") + models(suffix), http=http)
        try:
            node.start()
            yield node, suffix
        finally:
            node.stop()

    def failure_lines(self, node_id: str, since: int) -> list[str]:
        """The router's log lines about a node's failures since offset ``since``: not the
        failover's "attempt N on node ... failed", nor the access log."""
        return [
            line
            for line in self.router.log()[since:].splitlines()
            if node_id in line and " on node " not in line and "llmlb.access" not in line
        ]


@contextmanager
def rogue_arena(
    tmp: Path,
    good_models: list[dict[str, Any]],
    good_answers: dict[str, Planned],
    env: dict[str, str] | None = None,
) -> Iterator[RogueArena]:
    """A router process (``env`` added to its settings) and a good node serving ``good_models``
    with ``good_answers``; both stopped whatever happens."""
    router = router_proc(tmp, env={"LLMLB_NODE_TIMEOUT_S": "3", **(env or {})})
    good: FakeNode | None = None
    try:
        router.start().wait_healthy()
        node_key = create_key(router.url, ["node"], name="nodes")
        good = FakeNode(router.url, node_key, "good-1", good_models, answers=dict(good_answers)).start()
        yield RogueArena(router, good, create_key(router.url, ["api"], name="client"), node_key)
    finally:
        if good is not None:
            good.stop()
        router.stop()
