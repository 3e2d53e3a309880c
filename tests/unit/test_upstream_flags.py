"""How an OpenAI-compatible server's models get their flags (``LoadedPlugins.upstream_flags``),
and the one relay's promises: closed exactly once, and a broken server-sent event stream ended
with an OpenAI-shaped error event.

The capabilities here are small fakes (no routes): only their ``upstream_flags`` rules matter.
The built-in text and audio rules are checked together at the end, as the router combines them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pluggy
import pytest

from llmlb_core.capability import Capability, UpstreamFlags
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.server.request_id import RequestIdMiddleware
from llmlb_core.upstream.client import BadAnswer
from llmlb_core.upstream.relay import Relay, RelayStream, sse_error_event
from llmlb_plugins.audio.upstream import UPSTREAM_FLAGS as AUDIO_FLAGS
from llmlb_plugins.text.upstream import UPSTREAM_FLAGS as TEXT_FLAGS


def capability(name: str, flags: set[str], rule: UpstreamFlags | None) -> Capability[Any]:
    return Capability(
        name=name, model_flags=frozenset(flags), build_routes=lambda context: [], upstream_flags=rule
    )


def when(word: str, *flags: str) -> UpstreamFlags:
    """A rule claiming ``flags`` for a model whose id contains ``word``."""
    return UpstreamFlags(match=lambda model_id, kind: frozenset(flags) if word in model_id else frozenset())


TEXT = capability(
    "text",
    {"chat_completion", "text_completion", "embeddings"},
    UpstreamFlags(
        match=lambda model_id, kind: frozenset({"embeddings"}) if "embed" in model_id else frozenset(),
        fallback=frozenset({"chat_completion", "text_completion"}),
    ),
)
SPEECH = capability("speech", {"text_to_speech"}, when("tts", "text_to_speech"))
RERANK = capability(
    "rerank",
    {"rerank"},
    UpstreamFlags(
        match=lambda model_id, kind: frozenset({"rerank"}) if kind == "tei" else frozenset(),
        fallback=frozenset({"rerank_maybe"}),
    ),
)
IMAGES = capability("images", {"image_generation"}, None)  # never on OpenAI-compatible servers


def loaded(*capabilities: Capability[Any], enabled: list[str] | None = None) -> LoadedPlugins:
    by_name = {c.name: c for c in capabilities}
    return LoadedPlugins(
        manager=pluggy.PluginManager("llmlb"),
        capabilities=by_name,
        enabled=list(by_name) if enabled is None else enabled,
    )


# --- upstream_flags -------------------------------------------------------------------------
def test_a_claimed_model_gets_the_claims_and_no_fallback() -> None:
    plugins = loaded(TEXT, SPEECH, IMAGES)
    assert plugins.upstream_flags("nomic-embed-text", "openai") == ["embeddings"]
    assert plugins.upstream_flags("tts-1", "openai") == ["text_to_speech"]


def test_the_claims_of_every_capability_are_united() -> None:
    assert loaded(TEXT, SPEECH).upstream_flags("tts-embed", "openai") == ["embeddings", "text_to_speech"]


def test_an_unclaimed_model_gets_every_fallback() -> None:
    assert loaded(TEXT, SPEECH, IMAGES).upstream_flags("llama-3", "openai") == [
        "chat_completion",
        "text_completion",
    ]
    assert loaded(TEXT, RERANK).upstream_flags("llama-3", "openai") == [
        "chat_completion",
        "rerank_maybe",
        "text_completion",
    ]


def test_one_claim_anywhere_suppresses_every_fallback() -> None:
    """RERANK claims by kind; TEXT's fallback is then not added, nor RERANK's own."""
    assert loaded(TEXT, RERANK).upstream_flags("llama-3", "tei") == ["rerank"]


def test_the_kind_reaches_the_rule() -> None:
    seen: list[tuple[str, str]] = []

    def record(model_id: str, kind: str) -> frozenset[str]:
        seen.append((model_id, kind))
        return frozenset()

    loaded(capability("x", {"x"}, UpstreamFlags(match=record))).upstream_flags("m-1", "llama_cpp")
    assert seen == [("m-1", "llama_cpp")]


def test_disabled_capabilities_still_claim_their_models() -> None:
    """A speech model stays a speech model while the speech capability is off (it is then not
    listed: /v1/models filters by enabled flags); it never falls back to chat."""
    plugins = loaded(TEXT, SPEECH, enabled=["text"])
    assert plugins.upstream_flags("tts-1", "openai") == ["text_to_speech"]
    assert loaded(TEXT, SPEECH, enabled=["speech"]).upstream_flags("llama-3", "openai") == [
        "chat_completion",
        "text_completion",
    ]


def test_no_rules_no_flags() -> None:
    assert loaded(IMAGES).upstream_flags("anything", "openai") == []
    assert loaded().upstream_flags("anything", "openai") == []


def test_enabled_and_known_flags() -> None:
    plugins = loaded(TEXT, SPEECH, IMAGES, enabled=["speech", "images"])
    assert plugins.enabled_flags == {"text_to_speech", "image_generation"}
    assert plugins.known_flags == {
        "chat_completion",
        "text_completion",
        "embeddings",
        "text_to_speech",
        "image_generation",
    }


@pytest.mark.parametrize(
    ("model_id", "kind", "flags"),
    [
        ("llama-3.1-8b", "openai", ["chat_completion", "text_completion"]),
        ("nomic-embed-text", "openai", ["embeddings"]),
        ("whisper-1", "openai", ["speech_to_text"]),
        ("whisper-embed", "openai", ["speech_to_text"]),  # audio's alone, never embeddings
        ("ggml-base.en", "whisper_cpp", ["speech_to_text"]),
        ("tts-1-hd", "openai", ["text_to_speech"]),
        ("kokoro-tts", "openai", ["text_to_speech"]),
        ("gpt-4o-mini-transcribe", "openai", ["speech_to_text"]),
        ("shuttstock", "openai", ["chat_completion", "text_completion"]),  # "tts" not at a word start
    ],
)
def test_the_builtin_text_and_audio_rules_together(model_id: str, kind: str, flags: list[str]) -> None:
    text = capability("text", {"chat_completion", "text_completion", "embeddings"}, TEXT_FLAGS)
    audio = capability("audio", {"speech_to_text", "text_to_speech"}, AUDIO_FLAGS)
    assert loaded(text, audio).upstream_flags(model_id, kind) == flags


# --- Relay ----------------------------------------------------------------------------------
def upstream(
    *chunks: bytes, content_type: str = "text/event-stream", then: Exception | None = None
) -> httpx.Response:
    """An upstream response whose body arrives in exactly ``chunks``, optionally breaking off."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        if then is not None:
            raise then

    return httpx.Response(200, content=body(), headers={"content-type": content_type})


class Recorder:
    """``on_close`` / ``on_broken`` callbacks that record their calls."""

    def __init__(self) -> None:
        self.closed: list[tuple[bool, bool]] = []
        self.broken: list[Exception] = []

    def on_close(self, relay: Relay) -> None:
        self.closed.append((relay.completed, relay.broken))

    def on_broken(self, exc: Exception) -> tuple[str, str]:
        self.broken.append(exc)
        return "Node 'a' stopped streaming", "upstream_stream_broken"


async def test_a_completed_relay_closes_once() -> None:
    calls = Recorder()
    response = upstream(b"data: 1\n\n", b"data: 2\n\n")
    relay = Relay(response, on_close=calls.on_close)
    assert relay.sse
    assert [chunk async for chunk in relay] == [b"data: 1\n\n", b"data: 2\n\n"]
    await relay.aclose()
    await relay.aclose()
    assert calls.closed == [(True, False)] and relay.bytes_sent == 18
    assert response.is_closed


async def test_a_relay_closed_before_it_was_read_closes_once() -> None:
    calls = Recorder()
    response = upstream(b"data: 1\n\n")
    relay = Relay(response, on_close=calls.on_close)
    await relay.aclose()
    await relay.aclose()
    assert calls.closed == [(False, False)] and response.is_closed and relay.bytes_sent == 0


async def test_on_close_that_raises_still_closes_the_response_and_runs_once() -> None:
    calls: list[int] = []

    def on_close(relay: Relay) -> None:
        calls.append(1)
        raise RuntimeError("bookkeeping failed")

    response = upstream(b"data: 1\n\n")
    relay = Relay(response, on_close=on_close)
    with pytest.raises(RuntimeError):
        await relay.aclose()
    await relay.aclose()
    assert calls == [1] and response.is_closed


async def test_a_broken_sse_stream_ends_with_an_error_event() -> None:
    calls = Recorder()
    relay = Relay(
        upstream(b"data: 1\n\n", b'data: {"partial', then=httpx.ReadError("reset")),
        on_broken=calls.on_broken,
        on_close=calls.on_close,
    )
    chunks = [chunk async for chunk in relay]
    assert chunks[:2] == [b"data: 1\n\n", b'data: {"partial']
    assert chunks[2] == sse_error_event(
        "Node 'a' stopped streaming", "upstream_stream_broken", mid_event=True
    )
    assert [type(e) for e in calls.broken] == [httpx.ReadError]
    assert calls.closed == [(False, True)]


async def test_a_broken_binary_stream_is_aborted_not_ended_cleanly() -> None:
    calls = Recorder()
    relay = Relay(
        upstream(b"RIFF", content_type="audio/wav", then=httpx.ReadError("reset")),
        on_broken=calls.on_broken,
        on_close=calls.on_close,
    )
    received: list[bytes] = []
    with pytest.raises(httpx.ReadError):
        async for chunk in relay:
            received.append(chunk)
    assert received == [b"RIFF"] and len(calls.broken) == 1
    assert calls.closed == [(False, True)]


async def test_a_relay_over_its_limit_is_a_bad_answer() -> None:
    calls = Recorder()
    relay = Relay(
        upstream(b"data: 1\n\n", b"data: 22\n\n"),
        limit=12,
        on_broken=calls.on_broken,
        on_close=calls.on_close,
    )
    chunks = [chunk async for chunk in relay]
    assert chunks[0] == b"data: 1\n\n" and chunks[1].startswith(b"data: {")  # 22 never sent
    assert len(chunks) == 2 and isinstance(calls.broken[0], BadAnswer)
    assert calls.closed == [(False, True)]


async def test_a_relay_without_on_broken_raises() -> None:
    calls = Recorder()
    relay = Relay(upstream(b"data: 1\n\n", then=httpx.RemoteProtocolError("eof")), on_close=calls.on_close)
    with pytest.raises(httpx.RemoteProtocolError):
        _ = [chunk async for chunk in relay]
    assert calls.closed == [(False, True)]


async def test_a_relay_stream_closes_its_relay_when_the_client_left_before_the_headers() -> None:
    calls = Recorder()
    relay = Relay(upstream(b"data: 1\n\n"), on_close=calls.on_close)
    asgi = RelayStream(relay, media_type="text/event-stream").to_asgi_response(None, None)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        raise OSError("client gone")

    with pytest.raises(OSError, match="client gone"):
        await asgi({"type": "http", "method": "POST", "headers": []}, receive, send)  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["http.response.start"]  # the body was never asked for
    assert calls.closed == [(False, False)] and relay.response.is_closed


# --- sse_error_event ------------------------------------------------------------------------
def test_sse_error_event_is_one_openai_shaped_event() -> None:
    event = sse_error_event("Node 'a' stopped streaming", "upstream_stream_broken")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert json.loads(event.removeprefix(b"data: ")) == {
        "error": {
            "message": "Node 'a' stopped streaming",
            "type": "server_error",
            "param": None,
            "code": "upstream_stream_broken",
        }
    }


def test_sse_error_event_mid_event_closes_the_partial_event_first() -> None:
    event = sse_error_event("x", "c", mid_event=True)
    assert event.startswith(b"\n\ndata: {") and event == b"\n\n" + sse_error_event("x", "c")


async def test_sse_error_event_quotes_the_request_id() -> None:
    events: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        events.append(sse_error_event("broke", "upstream_stream_broken"))

    async def nothing(*args: Any) -> Any:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "headers": [(b"x-request-id", b"req-7")]}
    await RequestIdMiddleware(app)(scope, nothing, nothing)  # type: ignore[arg-type]
    assert json.loads(events[0].removeprefix(b"data: "))["error"]["message"] == "broke (request id: req-7)"
