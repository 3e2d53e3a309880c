"""Relayed streams are checked as they pass (issue 17, item 4), with the official openai SDK as
the client.

A real router process (``stream_idle_timeout_s`` 1 s), a good node, and for each test a fresh
rogue node (``tests.support.fake_node.FakeNode``) whose chat stream is broken the ways the issue
found: ``data:`` lines that are not JSON, invalid UTF-8, unknown events, endless 100 KB chunks
that never end an event, a stall; and a speech stream that stalls. Before its first event the
rogue's stream is replaced by the good node's (the SDK never sees it); after it the SDK raises
the router's error event; unknown events and ids are dropped without harm; the router keeps the
upstream's timing and bytes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_node import Answer, EventAnswer, Received
from tests.support.hostile_util import RogueArena, rogue_arena

IDLE_S = 1.0


def chunk_event(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "chat", "choices": [choice]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
GOOD = [chunk_event("hello"), chunk_event(" world"), DONE]


def models(suffix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"chat{suffix}", "capabilities": ["chat_completion"], "runtime": "openai_compatible"},
        {"id": f"voice{suffix}", "capabilities": ["text_to_speech"], "runtime": "openai_compatible"},
    ]


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RogueArena]:
    answers = {
        "/v1/chat/completions": EventAnswer(GOOD),
        "/v1/audio/speech": Answer(content_type="audio/wav"),
    }
    env = {"LLMLB_STREAM_IDLE_TIMEOUT_S": str(IDLE_S)}
    with rogue_arena(tmp_path_factory.mktemp("stream-checks"), models(""), answers, env) as made:
        yield made


@pytest.fixture
def sdk(arena: RogueArena) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=f"{arena.router.url}/v1", api_key=arena.api_key, max_retries=0, timeout=30
    )
    try:
        yield client
    finally:
        client.close()


def chat(sdk: openai.OpenAI, model: str = "chat") -> str:
    """Stream a chat completion with the SDK; the text it read."""
    stream = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream)


ENDLESS = [b'data: {"choices": "', *[b"x" * 100_000] * 40]  # 4 MB that never end an event
GARBAGE: dict[str, tuple[list[bytes], str]] = {
    "a data line that is not JSON": ([b"data: {'choices': [}\n\n"], "neither a JSON object nor [DONE]"),
    "a data line cut short": ([b'data: {"choices": [{"delta": \n\n'], "neither a JSON object nor [DONE]"),
    "invalid UTF-8": ([b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n'], "not UTF-8"),
    "endless 100 KB chunks": (ENDLESS, "an event over the limit of 1048576 bytes"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_before_the_first_event_never_reaches_the_sdk(
    arena: RogueArena, sdk: openai.OpenAI, case: str
) -> None:
    events, reason = GARBAGE[case]
    with arena.rogue(models) as (node, _):
        node.answers["/v1/chat/completions"] = EventAnswer(events, delay_s=0.05)
        assert [chat(sdk) for _ in range(4)] == ["hello world"] * 4  # the rogue's tries: the good node's
        assert any(r.path == "/v1/chat/completions" for r in node.received), "the rogue was never tried"
        view = arena.node_view(node.node_id)
        assert view["suspect"] is True and reason in view["recent_failures"][-1]["reason"], view


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_after_the_first_event_ends_the_sdks_stream_with_an_error(
    arena: RogueArena, sdk: openai.OpenAI, case: str
) -> None:
    events, reason = GARBAGE[case]
    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/chat/completions"] = EventAnswer([chunk_event("hel"), *events], delay_s=0.05)
        log_start = len(arena.router.log())
        read: list[str] = []
        stream = sdk.chat.completions.create(
            model=f"chat{suffix}", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError) as raised:
            read.extend(chunk.choices[0].delta.content or "" for chunk in stream)
        assert read == ["hel"]  # the first event, then the router's error event
        assert raised.value.code == "bad_upstream_response"
        assert "request id" in raised.value.message and "\\xff" not in raised.value.message
        view = arena.node_view(node.node_id)
        assert view["suspect"] is True and reason in view["recent_failures"][-1]["reason"], view
        said = arena.failure_lines(node.node_id, log_start)
        assert len(said) == 1 and reason in said[0] and said[0].isprintable(), said
        assert "Traceback" not in arena.router.log()[log_start:]


def test_endless_chunks_are_cut_at_the_event_bound_not_relayed(arena: RogueArena) -> None:
    """The issue's 3 MB in 2 s: now nothing of the endless event reaches the client."""
    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/chat/completions"] = EventAnswer([chunk_event("hel"), *ENDLESS], delay_s=0.05)
        with httpx.stream(
            "POST",
            f"{arena.router.url}/v1/chat/completions",
            json={"model": f"chat{suffix}", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"authorization": f"Bearer {arena.api_key}"},
            timeout=30,
        ) as response:
            received = b"".join(response.iter_raw())
        assert received.startswith(chunk_event("hel")) and len(received) < 2000
        assert json.loads(received.split(b"\n\n")[1].removeprefix(b"data: "))["error"]["code"] == (
            "bad_upstream_response"
        )


def test_unknown_events_and_ids_are_dropped_and_the_sdk_reads_the_rest(
    arena: RogueArena, sdk: openai.OpenAI
) -> None:
    """Without the checks, the SDK reads ``event: ping`` as a chunk with no choices (an
    IndexError in the caller's loop) and fails on the keep-alive after an ``id:`` line."""
    events = [
        b": keep-alive\n\n",
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b"event: thread.run.created\ndata: {}\n\n",
        b"id: 1\n" + chunk_event("hello"),
        b": keep-alive\n\n",
        chunk_event(" world"),
        DONE,
    ]
    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/chat/completions"] = EventAnswer(events)
        assert chat(sdk, f"chat{suffix}") == "hello world"
        assert arena.node_view(node.node_id)["suspect"] is False  # dropping is no failure


def test_a_stream_that_stalls_ends_with_upstream_timeout(arena: RogueArena, sdk: openai.OpenAI) -> None:
    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/chat/completions"] = EventAnswer([chunk_event("hel"), b'data: {"cho'], hold_s=30)
        started = time.monotonic()
        with pytest.raises(openai.APIError) as raised:
            chat(sdk, f"chat{suffix}")
        assert raised.value.code == "upstream_timeout" and time.monotonic() - started < IDLE_S + 5
        assert arena.node_view(node.node_id)["suspect"] is True


def test_a_speech_stream_that_stalls_is_aborted(arena: RogueArena) -> None:
    def stalled_audio(request: Received) -> EventAnswer:
        return EventAnswer([b"RIFF", b"audio"], hold_s=30, content_type="audio/wav")

    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/audio/speech"] = stalled_audio
        started = time.monotonic()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(  # a truncated body, not a clean end
                "POST",
                f"{arena.router.url}/v1/audio/speech",
                json={"model": f"voice{suffix}", "voice": "alloy", "input": "hi"},
                headers={"authorization": f"Bearer {arena.api_key}"},
                timeout=30,
            ) as response,
        ):
            assert response.status_code == 200
            b"".join(response.iter_raw())
        assert time.monotonic() - started < IDLE_S + 5
        assert arena.node_view(node.node_id)["suspect"] is True


def test_valid_events_keep_their_bytes_and_their_timing(arena: RogueArena) -> None:
    events = [chunk_event("a"), b'data: {"x":\ndata: 1}\r\n\r\n', chunk_event("b"), DONE]
    with arena.rogue(models) as (node, suffix):
        node.answers["/v1/chat/completions"] = EventAnswer(events, delay_s=0.4)
        arrivals: list[tuple[float, bytes]] = []
        with httpx.stream(
            "POST",
            f"{arena.router.url}/v1/chat/completions",
            json={"model": f"chat{suffix}", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"authorization": f"Bearer {arena.api_key}"},
            timeout=30,
        ) as response:
            for piece in response.iter_raw():
                arrivals.append((time.monotonic(), piece))
        assert b"".join(piece for _, piece in arrivals) == b"".join(events)  # byte for byte
        assert len(arrivals) == 4  # each event as it came, not batched
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        assert all(gap > 0.25 for gap in gaps), gaps
