"""The text routes against a real OpenAI-compatible server nobody here wrote: llama-cpp-python's
server (``python -m llama_cpp.server``) on a tiny random-weight LLaMA made by the tests
(``tests/llama_backend.py``), registered as an endpoint and fronted by a node. Its answers are
noise; its HTTP, JSON, server-sent events, auth and errors are the real thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import llama_backend
from tests.support.ci import in_ci
from tests.support.inproc import start_node, start_router
from tests.support.servers import ThreadServer, create_key, wait_until
from tests.support.text_fixtures import ADMIN, UPSTREAM_KEY, register_endpoint

# Skipped when llama-cpp-python is missing (outside the test extra), except under CI, where the
# whole suite must run: there the module's fixture fails saying what is missing.
pytestmark = pytest.mark.skipif(
    llama_backend.available() is not None and not in_ci(), reason=llama_backend.available() or ""
)
CHAT = llama_backend.CHAT_MODEL
EMBED = llama_backend.EMBED_MODEL
USER = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llama_backend.LlamaServer]:
    if (missing := llama_backend.available()) is not None:
        pytest.fail(f"{missing} (CI must run these tests: `make test` installs it)")
    with llama_backend.llama_server(tmp_path_factory.mktemp("llama"), api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, llama: llama_backend.LlamaServer
) -> Iterator[ThreadServer]:
    server = start_router(tmp_path_factory.mktemp("llama-router") / "data", endpoint_check_interval_s=1.0)
    try:
        created = register_endpoint(
            server.url, "llama", llama.url, api_key=UPSTREAM_KEY, kind="llama_cpp", slots=1
        )
        assert created["status"] == "online", created
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(router: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=create_key(router.url, ["api"]), max_retries=0)


def test_models_learned_from_the_server(client: openai.OpenAI) -> None:
    models = {m.id: m.model_extra["capabilities"] for m in client.models.list()}  # type: ignore[index]
    assert models == {CHAT: ["chat_completion", "text_completion"], EMBED: ["embeddings"]}


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=CHAT, messages=USER, max_tokens=8, seed=1)  # type: ignore[arg-type]
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=CHAT, messages=USER, max_tokens=8, stream=True)  # type: ignore[arg-type]
    )
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_streamed_completion_is_sse_ending_with_done(router: ThreadServer, client: openai.OpenAI) -> None:
    with httpx.stream(
        "POST",
        f"{router.url}/v1/completions",
        json={"model": CHAT, "prompt": "the router", "max_tokens": 6, "stream": True},
        headers={"authorization": f"Bearer {client.api_key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e for e in response.read().decode().replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "text_completion" and first["model"] == CHAT
    plain = client.completions.create(model=CHAT, prompt="the router", max_tokens=4)
    assert plain.object == "text_completion"


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=EMBED, input=["hello world", "the router"])
    assert [len(item.embedding) for item in result.data] == [64, 64]
    assert result.data[0].embedding != result.data[1].embedding


def test_a_servers_4xx_is_passed_through(client: openai.OpenAI) -> None:
    too_long = [{"role": "user", "content": "hello world " * 400}]  # over the 512-token context
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT, messages=too_long, max_tokens=4)  # type: ignore[arg-type]
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length" in caught.value.message


def test_disconnected_stream_frees_the_slot(router: ThreadServer, client: openai.OpenAI) -> None:
    with httpx.stream(
        "POST",
        f"{router.url}/v1/chat/completions",
        json={"model": CHAT, "messages": USER, "max_tokens": 400, "stream": True},
        headers={"authorization": f"Bearer {client.api_key}"},
        timeout=60,
    ) as response:
        assert next(response.iter_raw()).startswith(b"data: ")

    def released() -> bool:
        nodes = httpx.get(f"{router.url}/v0/nodes", headers=ADMIN).json()["data"]
        return next(n for n in nodes if n["id"] == "endpoint:llama")["inflight"] == 0

    wait_until(released, 10, "slot released")
    # The endpoint has one slot: the next request gets it and the server answers.
    assert client.chat.completions.create(model=CHAT, messages=USER, max_tokens=2).choices  # type: ignore[arg-type]


def test_a_node_in_front_of_the_server(tmp_path: Path, llama: llama_backend.LlamaServer) -> None:
    router = start_router(tmp_path / "data")
    node = None
    try:
        node = start_node(
            router.url,
            [],
            name="llama-node",
            runtimes=["openai_compatible"],
            runtime_settings={
                "openai_compatible": {"url": f"{llama.url}/v1", "api_key": UPSTREAM_KEY, "kind": "llama_cpp"}
            },
        )
        client = openai.OpenAI(
            base_url=f"{router.url}/v1", api_key=create_key(router.url, ["api"]), max_retries=0
        )
        chunks = list(
            client.chat.completions.create(model=CHAT, messages=USER, max_tokens=4, stream=True)  # type: ignore[arg-type]
        )
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        assert len(client.embeddings.create(model=EMBED, input="hello").data[0].embedding) == 64
    finally:
        if node is not None:
            node.stop()
        router.stop()
