"""A loopback OpenAI-compatible upstream for tests: real HTTP, real SSE, real multipart.

Used where no real server nobody here wrote can run: audio (every OpenAI-compatible whisper or
TTS server on PyPI downloads model weights at run time, which this machine cannot do) and text
tests that must control timing (chunks produced on a schedule, a client that disconnects, an
upstream that fails). The text plugin also runs against the real llama-cpp-python server
(``tests/llama_backend.py``).

It is a Litestar app served by uvicorn on a loopback port (``tests.support.servers.ThreadServer``):

- ``GET /v1/models`` lists ``models``; with ``api_key`` set every route wants that key.
- ``POST /v1/chat/completions``, ``/v1/completions``: JSON, or server-sent events when
  ``stream`` is true: ``x_chunks`` chunks (default 3), ``x_delay`` seconds apart, then
  ``data: [DONE]``. The time each chunk was produced is recorded, and so is a client that went
  away before the end (``disconnects``).
- ``POST /v1/embeddings``: one 8-float vector per input.
- ``POST /v1/audio/transcriptions`` and ``/translations``: the multipart body is parsed as it
  streams in (``multipart.PushMultipartParser``); the fields, the file's size and SHA-256 and
  when its bytes arrived are recorded; the answer follows ``response_format``.
- ``POST /v1/audio/speech``: ``x_chunks`` binary chunks of 4 KiB (default 8), ``x_delay`` apart.
- ``x_sleep``: a non-streamed chat answer comes that many seconds late (``active`` and
  ``max_active`` count such answers under way).
- ``x_break_after``: a streamed answer (SSE or speech) breaks off after that many chunks.
- Models named ``fail-400``, ``fail-500``, ``text-400`` answer that status (``text-400`` with a
  plain-text, not OpenAI-shaped, body).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import multipart
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream

SPEECH_MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPEECH_CHUNK = 4096


class BrokenStream(Exception):
    """Raised inside a streaming answer: uvicorn drops the connection mid-body."""


@dataclass
class Upload:
    fields: dict[str, str]
    file_name: str | None
    file_size: int
    file_sha256: str
    # (monotonic time, bytes of the body received so far) as the body streamed in.
    progress: list[tuple[float, int]]
    chunked: bool


@dataclass
class BackendState:
    name: str
    models: list[str]
    api_key: str | None = None
    # Models that answer 500 here (a node failing; the router should try another).
    broken: set[str] = field(default_factory=set)
    # Answer 404 to GET /v1/models, like whisper.cpp's server.
    no_models_route: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    disconnects: int = 0
    completed_streams: int = 0
    # Non-streamed chat requests with ``x_sleep`` (seconds) being answered now, and the most at once.
    active: int = 0
    max_active: int = 0
    uploads: list[Upload] = field(default_factory=list)
    body_bytes_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def count(self, path: str, model: str | None = None) -> int:
        return sum(1 for r in self.requests if r["path"] == path and (model is None or r["model"] == model))


def _error(status: int, message: str, code: str) -> Response[Any]:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Response(content=body, status_code=status)


def _failure(model: str, state: BackendState) -> Response[Any] | None:
    if model in state.broken:
        return _error(500, f"{model} is broken on {state.name}", "broken_here")
    if model == "fail-400":
        return _error(400, "fail-400 always refuses", "bad_thing")
    if model == "fail-500":
        return _error(500, "fail-500 always breaks", "backend_broke")
    if model == "text-400":
        return Response(content="plain text refusal", status_code=400, media_type="text/plain")
    return None


def build_backend(state: BackendState) -> Litestar:
    async def check_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if state.api_key and connection.headers.get("authorization") != f"Bearer {state.api_key}":
            raise NotAuthorizedException("wrong upstream key")

    def record(path: str, request: Request[Any, Any, Any], data: dict[str, Any], raw: bytes = b"") -> None:
        with state.lock:
            state.requests.append(
                {
                    "path": path,
                    "model": data.get("model"),
                    "body": data,
                    "raw": raw,
                    "authorization": request.headers.get("authorization"),
                    "at": time.monotonic(),
                }
            )

    async def paced(
        chunks: int, delay: float, make: Any, break_after: int | None = None, tail: bytes = b""
    ) -> AsyncIterator[bytes]:
        """``chunks`` pieces ``delay`` apart (then ``tail``); counts completions and disconnects."""
        completed = False
        try:
            for i in range(chunks):
                if i:
                    await asyncio.sleep(delay)
                if i == break_after:
                    raise BrokenStream(f"{state.name} broke after {i} chunks")
                state.chunk_times.append(time.monotonic())
                yield make(i)
            if tail:
                yield tail
            completed = True
            state.completed_streams += 1
        finally:
            if not completed:
                state.disconnects += 1
                state.disconnected.set()

    def sse(chunks: int, delay: float, make: Any, break_after: int | None = None) -> AsyncIterator[bytes]:
        return paced(
            chunks,
            delay,
            lambda i: b"data: " + json.dumps(make(i)).encode() + b"\n\n",
            break_after,
            tail=b"data: [DONE]\n\n",
        )

    @get("/v1/models")
    async def models() -> Response[Any]:
        if state.no_models_route:
            return Response(content={"detail": "Not Found"}, status_code=404)
        return Response(
            content={
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": state.name} for m in state.models
                ],
            }
        )

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        raw = await request.body()
        data = json.loads(raw)
        record("/v1/chat/completions", request, data, raw)
        if (failed := _failure(data["model"], state)) is not None:
            return failed
        last = data["messages"][-1].get("content", "")
        reply = f"{state.name} heard: {last}"
        if (pause := float(data.get("x_sleep", 0))) and not data.get("stream"):
            with state.lock:
                state.active += 1
                state.max_active = max(state.max_active, state.active)
            try:
                await asyncio.sleep(pause)
            finally:
                with state.lock:
                    state.active -= 1
        if data.get("stream"):
            words = reply.split(" ")
            chunks = int(data.get("x_chunks", len(words)))

            def chunk(i: int) -> dict[str, Any]:
                piece = (words[i] if i < len(words) else "") + (" " if i < chunks - 1 else "")
                return {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": data["model"],
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": piece}
                            if i == 0
                            else {"content": piece},
                            "finish_reason": "stop" if i == chunks - 1 else None,
                        }
                    ],
                }

            stream = sse(chunks, float(data.get("x_delay", 0)), chunk, data.get("x_break_after"))
            return Stream(stream, media_type="text/event-stream")
        return Response(
            content={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": data["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "echo_extra": {k: v for k, v in data.items() if k.startswith("x_")},
            }
        )

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        raw = await request.body()
        data = json.loads(raw)
        record("/v1/completions", request, data, raw)
        if (failed := _failure(data["model"], state)) is not None:
            return failed
        text = f"{state.name} completes: {data['prompt']}"
        if data.get("stream"):
            chunks = int(data.get("x_chunks", 3))

            def chunk(i: int) -> dict[str, Any]:
                return {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": data["model"],
                    "choices": [{"index": 0, "text": f"part{i} ", "finish_reason": None}],
                }

            return Stream(sse(chunks, float(data.get("x_delay", 0)), chunk), media_type="text/event-stream")
        return Response(
            content={
                "id": "cmpl-1",
                "object": "text_completion",
                "created": int(time.time()),
                "model": data["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            }
        )

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        raw = await request.body()
        data = json.loads(raw)
        record("/v1/embeddings", request, data, raw)
        if (failed := _failure(data["model"], state)) is not None:
            return failed
        inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
        return Response(
            content={
                "object": "list",
                "model": data["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [float(len(str(text)))] + [0.5] * 7}
                    for i, text in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    async def read_upload(request: Request[Any, Any, Any]) -> Upload:
        _, options = multipart.parse_options_header(request.headers["content-type"])
        fields: dict[str, str] = {}
        digest = hashlib.sha256()
        size = received = 0
        progress: list[tuple[float, int]] = []
        name: str | None = None
        current: multipart.MultipartSegment | None = None
        value: list[bytes] = []
        with multipart.PushMultipartParser(options["boundary"]) as parser:
            async for chunk in request.stream():
                received += len(chunk)
                state.body_bytes_seen += len(chunk)
                progress.append((time.monotonic(), received))
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        current, value = event, []
                        if event.name == "file":
                            name = event.filename
                    elif event:
                        assert current is not None
                        if current.name == "file":
                            size += len(event)
                            digest.update(event)
                        else:
                            value.append(event)
                    elif current is not None and current.name != "file":
                        fields[current.name] = b"".join(value).decode()
        upload = Upload(
            fields=fields,
            file_name=name,
            file_size=size,
            file_sha256=digest.hexdigest(),
            progress=progress,
            chunked="content-length" not in request.headers,
        )
        state.uploads.append(upload)
        return upload

    async def transcribe(request: Request[Any, Any, Any], path: str) -> Response[Any]:
        upload = await read_upload(request)
        record(path, request, dict(upload.fields))
        if (failed := _failure(upload.fields.get("model", ""), state)) is not None:
            return failed
        text = f"{state.name} heard {upload.file_size} bytes"
        fmt = upload.fields.get("response_format", "json")
        if fmt == "text":
            return Response(content=text, media_type="text/plain")
        if fmt in ("srt", "vtt"):
            head = "WEBVTT\n\n" if fmt == "vtt" else "1\n"
            return Response(content=f"{head}00:00:00,000 --> 00:00:01,000\n{text}\n", media_type="text/plain")
        body: dict[str, Any] = {"text": text}
        if fmt == "verbose_json":
            body.update(language=upload.fields.get("language", "en"), duration=1.0, segments=[])
        return Response(content=body)

    @post("/v1/audio/transcriptions", status_code=200, request_max_body_size=None)
    async def transcriptions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await transcribe(request, "/v1/audio/transcriptions")

    @post("/v1/audio/translations", status_code=200, request_max_body_size=None)
    async def translations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await transcribe(request, "/v1/audio/translations")

    @post("/v1/audio/speech", status_code=200)
    async def speech(request: Request[Any, Any, Any]) -> Response[Any]:
        raw = await request.body()
        data = json.loads(raw)
        record("/v1/audio/speech", request, data, raw)
        if (failed := _failure(data["model"], state)) is not None:
            return failed
        chunks = int(data.get("x_chunks", 8))
        delay = float(data.get("x_delay", 0))
        seed = hashlib.sha256(data["input"].encode()).digest()

        break_after = data.get("x_break_after")

        fmt = data.get("response_format") or "mp3"
        audio = paced(chunks, delay, lambda i: speech_chunk(seed, i), break_after)
        return Stream(audio, media_type=SPEECH_MEDIA_TYPES[fmt])

    return Litestar(
        route_handlers=[models, chat, completions, embeddings, transcriptions, translations, speech],
        guards=[check_key],
        logging_config=None,
        openapi_config=None,
    )


def speech_chunk(seed: bytes, index: int) -> bytes:
    """Chunk ``index`` of the fake audio for an input (deterministic, so tests can compare)."""
    block = hashlib.sha256(seed + index.to_bytes(4, "big")).digest()
    return (block * (SPEECH_CHUNK // len(block) + 1))[:SPEECH_CHUNK]


def expected_speech(text: str, chunks: int = 8) -> bytes:
    seed = hashlib.sha256(text.encode()).digest()
    return b"".join(speech_chunk(seed, i) for i in range(chunks))
