"""Text API through the router to an OpenAI-compatible endpoint, with the official SDK.

The upstream here is the loopback test server of ``tests/text_backends.py`` (real HTTP, real
SSE over uvicorn): these tests need an upstream whose timing and failures they control (chunks
produced on a schedule, a disconnect it can observe, a 500 on one backend only). The same routes
against the real llama-cpp-python server: ``tests/test_text_llama.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import wait_until
from tests.support.text_fixtures import (
    ADMIN,
    TEXT_MODELS,
    UPSTREAM_KEY,
    TextSystem,
    backend,
    register_endpoint,
    text_system,
    wait_endpoint,
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextSystem]:
    with text_system(tmp_path_factory.mktemp("text-api"), TEXT_MODELS) as system:
        yield system


def test_models_are_listed_with_their_capability_flags(system: TextSystem) -> None:
    models = {m.id: m for m in system.client().models.list()}
    assert models["tiny-chat"].model_extra["capabilities"] == ["chat_completion", "text_completion"]  # type: ignore[index]
    assert models["tiny-embed"].model_extra["capabilities"] == ["embeddings"]  # type: ignore[index]


def test_chat_completion_with_the_sdk(system: TextSystem) -> None:
    completion = system.client().chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hello there"}],
        extra_body={"x_custom": {"kept": [1, 2]}},
    )
    assert completion.choices[0].message.content == "up heard: hello there"
    seen = system.backend.state.requests[-1]
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the upstream key, not the client's
    assert seen["body"]["x_custom"] == {"kept": [1, 2]}  # unknown fields reach the backend


def test_the_clients_body_bytes_reach_the_backend_unchanged(system: TextSystem) -> None:
    raw = (
        b'{ "messages":[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}],'
        b'\n "model" : "tiny-chat", "top_k": 3}'
    )
    response = httpx.post(
        f"{system.url}/v1/chat/completions",
        content=raw,
        headers={**system.headers(), "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-llmlb-node"] == "endpoint:up"
    assert system.backend.state.requests[-1]["raw"] == raw


def test_streamed_chat_chunks_reach_the_client_as_the_upstream_produces_them(system: TextSystem) -> None:
    state = system.backend.state
    state.chunk_times.clear()
    arrivals: list[float] = []
    pieces: list[str] = []
    stream = system.client().chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
        extra_body={"x_delay": 0.25, "x_chunks": 5},
    )
    for chunk in stream:
        arrivals.append(time.monotonic())
        pieces.append(chunk.choices[0].delta.content or "")
    produced = list(state.chunk_times)
    assert len(arrivals) == len(produced) == 5
    assert "".join(pieces) == "up heard: one two three"  # 5 chunks of the reply's words
    for i in range(4):
        # Chunk i reached the client before the upstream even produced chunk i + 1.
        assert arrivals[i] < produced[i + 1], (i, arrivals, produced)


def test_stream_ends_with_done_and_is_sse(system: TextSystem) -> None:
    with httpx.stream(
        "POST",
        f"{system.url}/v1/completions",
        json={"model": "tiny-chat", "prompt": "hi", "stream": True, "x_chunks": 3},
        headers=system.headers(),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        body = response.read().decode()
    events = [line for line in body.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]] == ["part0 ", "part1 ", "part2 "]


def test_a_client_that_disconnects_cancels_the_upstream_stream(system: TextSystem) -> None:
    state = system.backend.state
    state.disconnected.clear()
    before = state.disconnects
    with httpx.stream(
        "POST",
        f"{system.url}/v1/chat/completions",
        json={
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "a long answer"}],
            "stream": True,
            "x_chunks": 200,
            "x_delay": 0.05,
        },
        headers=system.headers(),
    ) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    # The client closed its connection: the router must close the upstream request.
    assert state.disconnected.wait(5), "the upstream never saw the client go away"
    assert state.disconnects == before + 1

    def released() -> bool:
        nodes = httpx.get(f"{system.url}/v0/nodes", headers=ADMIN).json()["data"]
        return next(n for n in nodes if n["id"] == "endpoint:up")["inflight"] == 0

    wait_until(released, 5, "the stream's slot released")


def test_completions_and_embeddings(system: TextSystem) -> None:
    client = system.client()
    completion = client.completions.create(model="tiny-chat", prompt="once upon")
    assert completion.choices[0].text == "up completes: once upon"
    chunks = list(client.completions.create(model="tiny-chat", prompt="x", stream=True))
    assert [c.choices[0].text for c in chunks] == ["part0 ", "part1 ", "part2 "]
    embeddings = client.embeddings.create(model="tiny-embed", input=["ab", "abcd"])
    assert [e.embedding[0] for e in embeddings.data] == [2.0, 4.0]


def test_backend_4xx_is_passed_through_not_retried(system: TextSystem) -> None:
    client = system.client()
    state = system.backend.state
    before = state.count("/v1/chat/completions", "fail-400")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fail-400", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "bad_thing"
    assert "fail-400 always refuses" in caught.value.message
    with pytest.raises(openai.BadRequestError) as streamed:
        client.chat.completions.create(
            model="fail-400", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert streamed.value.code == "bad_thing"
    assert state.count("/v1/chat/completions", "fail-400") == before + 2  # once each, no retry


def test_a_non_openai_error_body_is_made_openai_shaped(system: TextSystem) -> None:
    for stream in (False, True):
        response = httpx.post(
            f"{system.url}/v1/chat/completions",
            json={"model": "text-400", "messages": [{"role": "user", "content": "x"}], "stream": stream},
            headers=system.headers(),
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["message"].startswith("plain text refusal")
        assert error["type"] == "invalid_request_error"


def test_backend_5xx_with_no_other_node_is_an_openai_error(system: TextSystem) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        system.client().chat.completions.create(model="fail-500", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 500
    # What the backend said in its 5xx is logged, not shown; the message quotes the request id.
    assert "fail-500 always breaks" not in caught.value.message
    assert f"request id: {caught.value.response.headers['x-request-id']}" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "tiny-chat"}, "messages"),
        ({"model": "tiny-chat", "messages": []}, "messages"),
        ({"model": "tiny-chat", "messages": [{"content": "x"}]}, "messages"),
        ({"model": "tiny-chat", "messages": [{"role": "user"}], "stream": "yes"}, "stream"),
        ({"model": 7, "messages": [{"role": "user"}]}, "model"),
    ],
)
def test_chat_validation_is_openai_shaped(system: TextSystem, body: dict[str, object], param: str) -> None:
    response = httpx.post(f"{system.url}/v1/chat/completions", json=body, headers=system.headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_bad_input_on_completions_and_embeddings(system: TextSystem) -> None:
    def post(path: str, body: object) -> httpx.Response:
        return httpx.post(f"{system.url}{path}", json=body, headers=system.headers())

    assert post("/v1/completions", {"model": "tiny-chat", "prompt": ""}).json()["error"]["param"] == "prompt"
    assert post("/v1/completions", {"model": "tiny-chat"}).json()["error"]["param"] == "prompt"
    assert post("/v1/embeddings", {"model": "tiny-embed", "input": []}).json()["error"]["param"] == "input"
    bad_format = post("/v1/embeddings", {"model": "tiny-embed", "input": "x", "encoding_format": "hex"})
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "encoding_format"
    invalid_json = httpx.post(
        f"{system.url}/v1/chat/completions",
        content=b"{not json",
        headers={**system.headers(), "content-type": "application/json"},
    )
    assert invalid_json.status_code == 400 and invalid_json.json()["error"]["code"] == "invalid_json"


def test_unknown_model_404_and_known_model_without_backend_503(system: TextSystem) -> None:
    client = system.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    # An embeddings model is not a chat model.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "x"}])
    registered = httpx.post(
        f"{system.url}/v0/models", headers=ADMIN, json={"id": "ghost", "capabilities": ["chat_completion"]}
    )
    assert registered.status_code == 201
    with pytest.raises(openai.InternalServerError) as offline:
        client.chat.completions.create(
            model="ghost", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert offline.value.status_code == 503 and offline.value.code == "no_capable_nodes"


def test_model_defaults_fill_fields_the_client_left_out(system: TextSystem) -> None:
    registered = httpx.post(
        f"{system.url}/v0/models",
        headers=ADMIN,
        json={
            "id": "tiny-chat",
            "capabilities": ["chat_completion"],
            "defaults": {"x_temp": 0.1, "top_k": 5},
        },
    )
    assert registered.status_code == 201
    try:
        system.client().chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 9}
        )
        body = system.backend.state.requests[-1]["body"]
        assert body["x_temp"] == 0.1 and body["top_k"] == 9  # the client's value wins
    finally:
        httpx.delete(f"{system.url}/v0/models/tiny-chat", headers=ADMIN)


def test_a_5xx_is_retried_on_another_endpoint_before_the_first_byte(tmp_path: Path) -> None:
    with text_system(tmp_path, ["flaky"]) as system, backend("second", ["flaky"]) as second:
        system.backend.state.broken.add("flaky")
        register_endpoint(system.url, "second", second.url, api_key=UPSTREAM_KEY)
        wait_endpoint(system.url, "second")
        client = system.client()
        # Both are idle and unused: the first registered ("up", broken) is tried first, answers
        # 500, is marked suspect, and the request goes to "second" before any byte reached the
        # client. The streamed request then avoids the suspect endpoint.
        plain = client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].message.content == "second heard: hi"
        stream = client.chat.completions.create(
            model="flaky", messages=[{"role": "user", "content": "yo"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "second heard: yo"
        assert system.backend.state.count("/v1/chat/completions", "flaky") == 1
        assert second.state.count("/v1/chat/completions", "flaky") == 2
        endpoints = {e["name"]: e for e in httpx.get(f"{system.url}/v0/nodes", headers=ADMIN).json()["data"]}
        assert endpoints["up"]["suspect"] is True


def test_a_streamed_request_is_retried_when_the_first_endpoint_fails(tmp_path: Path) -> None:
    with text_system(tmp_path, ["flaky"]) as system, backend("second", ["flaky"]) as second:
        system.backend.state.broken.add("flaky")
        register_endpoint(system.url, "second", second.url, api_key=UPSTREAM_KEY)
        wait_endpoint(system.url, "second")
        stream = system.client().chat.completions.create(
            model="flaky", messages=[{"role": "user", "content": "yo"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "second heard: yo"
        assert system.backend.state.count("/v1/chat/completions", "flaky") == 1
        assert second.state.count("/v1/chat/completions", "flaky") == 1


def test_an_upstream_that_breaks_mid_stream_ends_the_sse_with_an_error_event(system: TextSystem) -> None:
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in system.client().chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
            extra_body={"x_chunks": 4, "x_break_after": 2},
        ):
            pieces.append(chunk.choices[0].delta.content or "")
    assert pieces == ["up ", "heard: "]  # what came before the break was relayed
    assert "stopped streaming" in caught.value.message


def test_a_refused_connection_is_retried_elsewhere_and_takes_the_endpoint_out(tmp_path: Path) -> None:
    # Checks far apart: the router learns that "up" is gone only from the request itself.
    with (
        text_system(tmp_path, ["tiny-chat"], endpoint_check_interval_s=60, node_timeout_s=120) as system,
        backend("second", ["tiny-chat"]) as second,
    ):
        register_endpoint(system.url, "second", second.url, api_key=UPSTREAM_KEY)
        system.backend.server.stop()  # "up" now refuses connections, still listed online
        stream = system.client().chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "still there?"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "second heard: still there?"
        nodes = {n["name"]: n for n in httpx.get(f"{system.url}/v0/nodes", headers=ADMIN).json()["data"]}
        assert nodes["up"]["status"] == "offline"
        assert "unreachable" in nodes["up"]["recent_failures"][-1]["reason"]
