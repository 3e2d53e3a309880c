"""A node that speaks broken HTTP is an upstream failure like any other (issue 17, item 1).

A real router process; a good node (``tests.support.fake_node.FakeNode``, a Litestar app) and,
for each test, a fresh ROGUE node: a raw asyncio socket server (``tests.support.raw_http``) that
registers through the real node API with a node key, advertises the good node's models (and
models of its own), and answers with the bytes an attacker would send: two different
``content-length`` headers, ``HTTP/9.9 abc def``, a 5 MB header, a chunk size that is not hex,
a body shorter than its ``content-length``, a connection reset mid-body.

For every kind of answer the router reads (buffered: images, chat, embeddings, transcription;
relayed: chat streams, speech; checked event streams: streamed images), beside the good node
four requests out of four succeed (the rogue's were tried on the good node), alone it is a 502
``bad_upstream_response`` (garbage) or ``upstream_unreachable`` (a cut connection), the rogue
is suspect in ``/v0/nodes``, and the router's log says so in one line, with no traceback.
Before the fix: ``[200, 500, 200, 500]`` and a traceback per 500.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.fake_node import (
    Answer,
    EventAnswer,
    Received,
    image_events_as_asked,
    images_as_asked,
)
from tests.support.hostile_util import RogueArena, expect_error, rogue_arena
from tests.support.raw_http import RESET, Pause, RawAnswer, RawHttpServer, chunk, head
from tests.support.servers import wait_until

MB = 1024 * 1024
WAV = b"RIFF" + bytes(40) + b"good audio"
CHAT_ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"content": "hi"}}],
}
CHAT_CHUNKS = [
    b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}\n\n',
    b"data: [DONE]\n\n",
]


def image_advert(model: str) -> dict[str, Any]:
    supports = {"mask": True, "reference_images": 0, "loras": [], "partial_images": True}
    details = {"family": "sd1", "label": "SD 1.x", "native_size": "64x64", "supports": supports}
    return {
        "id": model,
        "capabilities": ["image_generation"],
        "runtime": "stable_diffusion",
        "details": details,
    }


def adverts(suffix: str = "") -> list[dict[str, Any]]:
    """The models: ``img``, ``chat``, ``voice``; with a suffix, a rogue's own."""
    text = {"capabilities": ["chat_completion", "embeddings"], "runtime": "openai_compatible"}
    voice = {"capabilities": ["text_to_speech", "speech_to_text"], "runtime": "openai_compatible"}
    return [image_advert(f"img{suffix}"), {"id": f"chat{suffix}", **text}, {"id": f"voice{suffix}", **voice}]


def streamed(request: Received) -> bool:
    return request.form().get("stream") == "true"


GOOD_ANSWERS: dict[str, Callable[[Received], Answer | EventAnswer]] = {
    "/v1/images/generations": lambda r: image_events_as_asked(r) if streamed(r) else images_as_asked(r),
    "/v1/chat/completions": lambda r: EventAnswer(CHAT_CHUNKS) if streamed(r) else Answer.json(CHAT_ANSWER),
    "/v1/embeddings": lambda r: Answer.json({"object": "list", "data": [{"embedding": [0.5], "index": 0}]}),
    "/v1/audio/speech": lambda r: Answer(content_type="audio/wav", body=WAV),
    "/v1/audio/transcriptions": lambda r: Answer.json({"text": "hello"}),
}


@dataclass(frozen=True)
class Route:
    """One kind of answer the router reads: the request, the content type of a good answer,
    and what a good answer looks like to the client."""

    path: str
    model: str  # "img", "chat" or "voice"
    body: dict[str, Any]
    content_type: str
    ok: Callable[[httpx.Response], bool]
    multipart: bool = False

    def send(self, url: str, api_key: str, suffix: str = "") -> httpx.Response:
        auth = {"authorization": f"Bearer {api_key}"}
        model = self.model + suffix
        if self.multipart:
            files = {"file": ("a.wav", WAV, "audio/wav")}
            return httpx.post(url + self.path, data={"model": model}, files=files, headers=auth, timeout=60)
        return httpx.post(url + self.path, json={**self.body, "model": model}, headers=auth, timeout=60)


def image_ok(response: httpx.Response) -> bool:
    return base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")


def image_stream_ok(response: httpx.Response) -> bool:
    names = [line for line in response.text.splitlines() if line.startswith("event: ")]
    return names[-1] == "event: image_generation.completed" and "error" not in response.text


def chat_stream_ok(response: httpx.Response) -> bool:
    return response.content == b"".join(CHAT_CHUNKS)


ROUTES = {
    "images": Route(
        "/v1/images/generations",
        "img",
        {"prompt": "a cat", "response_format": "b64_json"},
        "application/json",
        image_ok,
    ),
    "image stream": Route(
        "/v1/images/generations",
        "img",
        {"prompt": "a cat", "stream": True, "partial_images": 1},
        "text/event-stream",
        image_stream_ok,
    ),
    "chat": Route(
        "/v1/chat/completions",
        "chat",
        {"messages": [{"role": "user", "content": "hi"}]},
        "application/json",
        lambda r: r.json() == CHAT_ANSWER,
    ),
    "chat stream": Route(
        "/v1/chat/completions",
        "chat",
        {"messages": [{"role": "user", "content": "hi"}], "stream": True},
        "text/event-stream",
        chat_stream_ok,
    ),
    "embeddings": Route(
        "/v1/embeddings",
        "chat",
        {"input": "x"},
        "application/json",
        lambda r: r.json()["data"][0]["index"] == 0,
    ),
    "speech": Route(
        "/v1/audio/speech",
        "voice",
        {"voice": "alloy", "input": "hi"},
        "audio/wav",
        lambda r: r.content == WAV,
    ),
    "transcription": Route(
        "/v1/audio/transcriptions",
        "voice",
        {},
        "application/json",
        lambda r: r.json() == {"text": "hello"},
        multipart=True,
    ),
}


def partial(content_type: str) -> bytes:
    """The start of an answer of this type, short of anything the router may pass on."""
    if content_type == "text/event-stream":
        return b'data: {"choi'
    return b"" if content_type.startswith("audio/") else b'{"data": ['


# Each variant: the rogue's answer for a content type, and what the router makes of it.
Variant = Callable[[str], RawAnswer]
GARBAGE = "bad_upstream_response"
CUT = "upstream_unreachable"
VARIANTS: dict[str, tuple[Variant, str]] = {
    "two content-length": (
        lambda ct: RawAnswer(
            [head("200 OK", "content-length: 2", "content-length: 5", content_type=ct) + b"{}"]
        ),
        GARBAGE,
    ),
    "HTTP/9.9 abc def": (
        lambda ct: RawAnswer(
            [f"HTTP/9.9 abc def\r\ncontent-type: {ct}\r\ncontent-length: 2\r\n\r\n{{}}".encode()]
        ),
        GARBAGE,
    ),
    "a 5 MB header": (
        lambda ct: RawAnswer(
            [head("200 OK", "x-pad: " + "a" * (5 * MB), "content-length: 2", content_type=ct)]
        ),
        GARBAGE,
    ),
    "a chunk size that is not hex": (
        lambda ct: RawAnswer(
            [
                head("200 OK", "transfer-encoding: chunked", content_type=ct),
                Pause(0.05),
                b"zz\r\n{}\r\n0\r\n\r\n",
            ]
        ),
        GARBAGE,
    ),
    "shorter than its content-length": (
        lambda ct: RawAnswer([head("200 OK", "content-length: 4096", content_type=ct) + partial(ct)]),
        CUT,
    ),
    "reset mid-body": (
        lambda ct: RawAnswer(
            [
                head("200 OK", "transfer-encoding: chunked", content_type=ct),
                *([chunk(partial(ct))] if partial(ct) else []),
                Pause(0.05),
                RESET,
            ]
        ),
        CUT,
    ),
}


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RogueArena]:
    with rogue_arena(tmp_path_factory.mktemp("broken-http"), adverts(), GOOD_ANSWERS) as made:
        yield made


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_node_that_speaks_broken_http_is_failed_over_and_suspect(
    arena: RogueArena, route: str, variant: str
) -> None:
    spec = ROUTES[route]
    answer, code = VARIANTS[variant]
    raw = RawHttpServer(answers={spec.path: answer(spec.content_type)})
    with arena.rogue(adverts, http=raw) as (node, suffix):
        log_start = len(arena.router.log())

        # Beside the good node: every request succeeds (the rogue's tries went to the good node).
        answers = [spec.send(arena.router.url, arena.api_key) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4, [a.text[:300] for a in answers]
        assert all(spec.ok(a) and a.headers["x-llmlb-node"] == "good-1" for a in answers)
        assert len(raw.requests) >= 1, "the rogue was never tried"

        # Alone (its own model): a 502, the rogue suspect, one log line, no traceback.
        wait_until(lambda: arena.node_view(node.node_id)["status"] == "online", 10, "the rogue back online")
        alone_start = len(arena.router.log())
        tried = len(raw.requests)
        error = expect_error(spec.send(arena.router.url, arena.api_key, suffix), 502, code)
        assert "HTTP/9.9" not in error["message"] and "Content-Length" not in error["message"]  # no internals
        assert len(raw.requests) == tried + 1
        view = arena.node_view(node.node_id)
        assert view["suspect"] is True, view
        reason = view["recent_failures"][-1]["reason"]
        assert reason.startswith("bad answer: broken HTTP" if code == GARBAGE else "answer cut: "), reason
        said = arena.failure_lines(node.node_id, alone_start)
        assert len(said) == 1, said
        assert len(said[0]) < 1200 and said[0].isprintable(), said[0]
        assert "Traceback" not in arena.router.log()[log_start:]
