"""A hostile node for tests: a FAKE, not llmlb's node runtime.

It is a real loopback HTTP server (a Litestar app in ``tests.support.servers.ThreadServer``) that
registers with a router through ``POST /v0/nodes/register`` with a node key, heartbeats like a
node, advertises the models it is given, and answers every GET and POST with whatever the test set in
``answers[path]`` (status, content type, body bytes, optionally streamed in pieces without a
length; or a function of the request, e.g. :func:`images_as_asked`). It records what it
received, so a test can see exactly what the router sent a node.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import multipart
from litestar import Litestar, Request, Response, route
from litestar.response import Stream
from PIL import Image

from tests.support.servers import ThreadServer

HEARTBEAT_S = 0.3


@dataclass
class Answer:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    pieces: int = 0  # > 0: sent in that many pieces, chunked, with no content-length

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Answer:
        return cls(status=status, body=json.dumps(data).encode())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


def png_b64(size: tuple[int, int] = (8, 8)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def images_answer(count: int = 1, **extra: Any) -> Answer:
    """A well-formed images answer (what the real node sends) with ``count`` PNGs."""
    data = [{"b64_json": png_b64(), "seed": i} for i in range(count)]
    return Answer.json({"created": 1, "data": data, "output_format": "png", **extra})


def images_as_asked(request: Received) -> Answer:
    """A well-formed images answer with as many images as the request's ``n`` (JSON or form)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        boundary = multipart.parse_options_header(content_type)[1]["boundary"]
        parts = multipart.MultipartParser(io.BytesIO(request.body), boundary)
        form = {p.name: p.value for p in parts if p.filename is None}
    else:
        form = json.loads(request.body)
    return images_answer(count=int(form.get("n", 1)))


Planned = Answer | Callable[[Received], Answer]


@dataclass
class FakeNode:
    router_url: str
    node_key: str
    node_id: str
    models: list[dict[str, Any]]
    answers: dict[str, Planned] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    slots: int = 4

    def __post_init__(self) -> None:
        node = self

        @route("/{path:path}", http_method=["GET", "POST"], status_code=200)
        async def answer(request: Request[Any, Any, Any]) -> Response[Any]:
            path = request.url.path
            received = Received(path, dict(request.headers), await request.body())
            node.received.append(received)
            planned = node.answers.get(path, Answer(status=404, body=b'{"error": "no answer set"}'))
            if not isinstance(planned, Answer):
                planned = planned(received)
            if planned.pieces <= 0:
                return Response(
                    content=planned.body, status_code=planned.status, media_type=planned.content_type
                )
            size = -(-len(planned.body) // planned.pieces)

            async def pieces() -> AsyncIterator[bytes]:
                for start in range(0, len(planned.body), size):
                    yield planned.body[start : start + size]

            return Stream(pieces(), status_code=planned.status, media_type=planned.content_type)

        self.server = ThreadServer(Litestar(route_handlers=[answer], logging_config=None))
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._heartbeat, daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{self.router_url}{path}",
            json=body,
            headers={"authorization": f"Bearer {self.node_key}"},
            timeout=10,
        )

    def register(self) -> None:
        response = self._post(
            "/v0/nodes/register",
            {
                "node_id": self.node_id,
                "name": self.node_id,
                "base_url": self.url,
                "token": "fake-node-token",
                "runtime_types": ["stable_diffusion", "openai_compatible"],
                "models": self.models,
                "slots": self.slots,
            },
        )
        assert response.status_code == 200, response.text

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                reply = self._post("/v0/nodes/heartbeat", {"node_id": self.node_id, "free_slots": self.slots})
                if reply.status_code == 200 and reply.json().get("reregister"):
                    self.register()
            except httpx.HTTPError:
                pass

    def start(self) -> FakeNode:
        self.server.start()
        self.register()
        self._beats.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._beats.is_alive():
            self._beats.join(timeout=5)
        self.server.stop()
