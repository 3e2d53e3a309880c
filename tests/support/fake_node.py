"""A hostile node for tests: a FAKE, not llmlb's node runtime.

It is a real loopback HTTP server (a Litestar app in ``tests.support.servers.ThreadServer``, or
any server given as ``http``, such as one that speaks broken HTTP) that registers with a router
through ``POST /v0/nodes/register`` with a node key, heartbeats like a node (with the ``jobs``
progress a test sets), advertises the models it is given, and answers every GET and POST with
whatever the test set in ``answers[path]`` (status, content type, body bytes, optionally
streamed in pieces without a length; server-sent events written one by one,
:class:`EventAnswer`; or a function of the request, e.g. :func:`images_as_asked` and
:func:`image_events_as_asked`). It records what it received, so a test can see exactly what the
router sent a node, and which event streams the router closed before their end (``closed_early``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import multipart
from litestar import Litestar, Request, Response, route
from litestar.response import Stream
from PIL import Image

from tests.support.servers import Server, ThreadServer

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
class EventAnswer:
    """A ``200 text/event-stream`` answer: each of ``events`` (raw bytes, see :func:`sse`) is
    written as its own chunk, ``delay_s`` apart; then the connection stays open ``hold_s`` more
    before the stream ends (a node still working), or with ``then_break`` it is cut off (the
    server aborts the response: no clean end of the chunked body)."""

    events: list[bytes]
    delay_s: float = 0.0
    hold_s: float = 0.0
    then_break: bool = False
    status: int = 200
    content_type: str = "text/event-stream"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        """The request's plain fields (a JSON body's members, or a multipart form's fields)."""
        content_type = self.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            boundary = multipart.parse_options_header(content_type)[1]["boundary"]
            parts = multipart.MultipartParser(io.BytesIO(self.body), boundary)
            return {p.name: p.value for p in parts if p.filename is None}
        data: dict[str, Any] = json.loads(self.body)
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


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
    return images_answer(count=int(request.form().get("n", 1)))


def sse(event: str, data: Any) -> bytes:
    """One server-sent event as a node writes it (``data``: JSON-encoded unless bytes)."""
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def image_event(
    kind: str,
    *,
    edit: bool = False,
    image_index: int = 0,
    partial_image_index: int | None = None,
    size: str = "64x64",
    output_format: str = "png",
    b64_json: str | None = None,
    seed: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The data of one streamed image event (``kind``: "partial_image" or "completed"), as the
    wire of issue 10 has the node write it."""
    event: dict[str, Any] = {
        "type": f"{'image_edit' if edit else 'image_generation'}.{kind}",
        "b64_json": b64_json if b64_json is not None else png_b64(),
        "created_at": int(time.time()),
        "size": size,
        "quality": "auto",
        "background": "auto",
        "output_format": output_format,
        "image_index": image_index,
    }
    if kind == "partial_image":
        event["partial_image_index"] = partial_image_index or 0
    else:
        event["usage"] = {
            "input_tokens": 0,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": 0,
            "total_tokens": 0,
        }
    if seed is not None:
        event["seed"] = seed
    return {**event, **extra}


def image_events(
    count: int, partial_images: int, *, edit: bool = False, seed: int = 0, size: str = "64x64"
) -> list[dict[str, Any]]:
    """A part's well-formed events: for each image, its partials then its completed event."""
    out = []
    for i in range(count):
        common = {"edit": edit, "image_index": i, "seed": seed + i, "size": size}
        out += [image_event("partial_image", partial_image_index=k, **common) for k in range(partial_images)]
        out.append(image_event("completed", **common))
    return out


def as_sse(events: list[dict[str, Any]]) -> list[bytes]:
    return [sse(e["type"], e) for e in events]


def image_events_as_asked(request: Received, *, delay_s: float = 0.0) -> EventAnswer:
    """A well-formed event stream for what the request asked (``n``, ``partial_images``,
    ``seed``, ``size``; edits when it is a form)."""
    form = request.form()
    size = form.get("size", "auto")
    events = image_events(
        int(form.get("n", 1)),
        int(form.get("partial_images", 0)),
        edit=request.path.endswith("/edits"),
        seed=int(form.get("seed", 0)),
        size="64x64" if size == "auto" else size,
    )
    return EventAnswer(as_sse(events), delay_s=delay_s)


Planned = Answer | EventAnswer | Callable[[Received], Answer | EventAnswer]


@dataclass
class FakeNode:
    router_url: str
    node_key: str
    node_id: str
    models: list[dict[str, Any]]
    answers: dict[str, Planned] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    slots: int = 4
    # Running jobs reported in every heartbeat (JobProgress objects as dicts).
    jobs: list[dict[str, Any]] = field(default_factory=list)
    # Paths of event streams whose client (the router) left before they ended.
    closed_early: list[str] = field(default_factory=list)
    # The server it registers instead of its own Litestar app (which answers ``answers``):
    # e.g. a ``tests.support.raw_http.RawHttpServer`` that speaks broken HTTP.
    http: Server | None = None

    def __post_init__(self) -> None:
        node = self

        @route("/{path:path}", http_method=["GET", "POST"], status_code=200)
        async def answer(request: Request[Any, Any, Any]) -> Response[Any]:
            path = request.url.path
            received = Received(path, dict(request.headers), await request.body())
            node.received.append(received)
            planned = node.answers.get(path, Answer(status=404, body=b'{"error": "no answer set"}'))
            if callable(planned):
                planned = planned(received)
            if isinstance(planned, EventAnswer):
                return node._event_stream(path, planned)
            if planned.pieces <= 0:
                return Response(
                    content=planned.body, status_code=planned.status, media_type=planned.content_type
                )
            size = -(-len(planned.body) // planned.pieces)

            async def pieces() -> AsyncIterator[bytes]:
                for start in range(0, len(planned.body), size):
                    yield planned.body[start : start + size]

            return Stream(pieces(), status_code=planned.status, media_type=planned.content_type)

        self.server: Server = self.http or ThreadServer(
            Litestar(route_handlers=[answer], logging_config=None)
        )
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._heartbeat, daemon=True)

    def _event_stream(self, path: str, planned: EventAnswer) -> Stream:
        async def events() -> AsyncIterator[bytes]:
            finished = False
            try:
                for number, event in enumerate(planned.events):
                    if number and planned.delay_s:
                        await asyncio.sleep(planned.delay_s)
                    yield event
                await asyncio.sleep(planned.hold_s)
                if planned.then_break:
                    finished = True
                    raise RuntimeError("the fake node breaks off its event stream")
                finished = True
            finally:
                if not finished:
                    self.closed_early.append(path)

        return Stream(events(), status_code=planned.status, media_type=planned.content_type)

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
                beat = {"node_id": self.node_id, "free_slots": self.slots, "jobs": self.jobs}
                reply = self._post("/v0/nodes/heartbeat", beat)
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
