"""A node running the ``openai_compatible`` runtime in front of an OpenAI-compatible server.

The server is the loopback test server of ``tests/text_backends.py`` (these tests need to see
what reaches it and when); ``tests/test_text_llama.py`` puts a node in front of the real
llama-cpp-python server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.inproc import start_node, start_router
from tests.support.servers import (
    Proc,
    ThreadServer,
    create_key,
    node_proc,
    node_status,
    router_proc,
    wait_until,
)
from tests.support.text_backends import expected_speech
from tests.support.text_fixtures import ADMIN, AUDIO_MODELS, UPSTREAM_KEY, Backend, backend


@dataclass
class NodeSystem:
    router: ThreadServer
    node: ThreadServer
    backend: Backend
    api_key: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=self.api_key, max_retries=0)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSystem]:
    tmp = tmp_path_factory.mktemp("node-runtime")
    with backend("local", ["tiny-chat", *AUDIO_MODELS]) as up:
        router = start_router(tmp / "data")
        node = None
        try:
            node = start_node(
                router.url,
                [],
                name="oc-node",
                runtimes=["openai_compatible"],
                runtime_settings={
                    "openai_compatible": {"url": up.url, "api_key": UPSTREAM_KEY, "poll_interval_s": 0.3}
                },
            )
            yield NodeSystem(router, node, up, create_key(router.url, ["api"]))
        finally:
            if node is not None:
                node.stop()
            router.stop()


def test_node_advertises_the_upstream_models(system: NodeSystem) -> None:
    nodes = httpx.get(f"{system.router.url}/v0/nodes", headers=ADMIN).json()["data"]
    node = next(n for n in nodes if n["name"] == "oc-node")
    assert node["runtime_types"] == ["openai_compatible"]
    flags = {m["id"]: m["capabilities"] for m in node["models"]}
    assert flags == {
        "tiny-chat": ["chat_completion", "text_completion"],
        "whisper-tiny": ["speech_to_text"],
        "tts-tiny": ["text_to_speech"],
    }


def test_chat_plain_and_streamed_through_the_node(system: NodeSystem) -> None:
    client = system.client()
    reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "local heard: hi"
    # The server gets the upstream key, never the router's credential for the node.
    assert system.backend.state.requests[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    state = system.backend.state
    state.chunk_times.clear()
    arrivals: list[float] = []
    for _ in client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "a b c d"}],
        stream=True,
        extra_body={"x_delay": 0.25, "x_chunks": 4},
    ):
        arrivals.append(time.monotonic())
    produced = list(state.chunk_times)
    assert len(arrivals) == 4
    for i in range(3):  # router and node both pass each chunk on at once
        assert arrivals[i] < produced[i + 1], (arrivals, produced)


def test_disconnect_propagates_through_router_and_node(system: NodeSystem) -> None:
    state = system.backend.state
    state.disconnected.clear()
    with httpx.stream(
        "POST",
        f"{system.router.url}/v1/chat/completions",
        json={
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "x_chunks": 200,
            "x_delay": 0.05,
        },
        headers={"authorization": f"Bearer {system.api_key}"},
    ) as response:
        assert next(response.iter_raw()).startswith(b"data: ")
    assert state.disconnected.wait(5), "the server behind the node never saw the client go away"

    def idle() -> bool:
        health = httpx.get(f"{system.node.url}/health").json()
        return bool(health["active_jobs"] == 0)

    wait_until(idle, 5, "node idle again")


def test_speech_and_transcription_through_the_node(system: NodeSystem) -> None:
    client = system.client()
    with client.audio.speech.with_streaming_response.create(
        model="tts-tiny", voice="alloy", input="node speech"
    ) as response:
        assert response.read() == expected_speech("node speech")
    audio = os.urandom(300_000)
    result = client.audio.transcriptions.create(model="whisper-tiny", file=("a.wav", audio))
    assert result.text == f"local heard {len(audio)} bytes"
    assert system.backend.state.uploads[-1].file_sha256 == hashlib.sha256(audio).hexdigest()


async def test_upload_streams_through_router_and_node(system: NodeSystem) -> None:
    state = system.backend.state
    boundary = "nodeboundary"
    prefix = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    piece = os.urandom(256 * 1024)
    seen_before = state.body_bytes_seen
    streamed = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal streamed
        yield prefix + piece
        for _ in range(40):
            if state.body_bytes_seen - seen_before >= len(piece):
                streamed = True
                break
            await asyncio.sleep(0.1)
        yield piece + f"\r\n--{boundary}--\r\n".encode()

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{system.router.url}/v1/audio/transcriptions",
            content=body(),
            headers={
                "authorization": f"Bearer {system.api_key}",
                "content-type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert response.status_code == 200, response.text
    assert streamed, "the server got nothing until the client had sent everything"


def test_new_upstream_models_reach_the_router(system: NodeSystem) -> None:
    system.backend.state.models.append("late-embed")
    try:

        def listed() -> bool:
            return "late-embed" in {m.id for m in system.client().models.list()}

        wait_until(listed, 10, "late-embed listed")
        embedding = system.client().embeddings.create(model="late-embed", input="abc")
        assert embedding.data[0].embedding[0] == 3.0
    finally:
        system.backend.state.models.remove("late-embed")


def test_node_cli_flags_front_an_upstream(tmp_path: Path, procs: list[Proc]) -> None:
    router = router_proc(tmp_path, env={"LLMLB_NODE_TIMEOUT_S": "5"})
    procs.append(router)
    router.start().wait_healthy()
    with backend("cli", ["served-model", "hidden-model"]) as up:
        node = node_proc(
            tmp_path,
            router.url,
            tmp_path / "no-models",
            create_key(router.url, ["node"]),
            name="cli-node",
            extra=[
                "--runtime", "openai_compatible",
                "--upstream", f"{up.url}/v1",
                "--upstream-key", UPSTREAM_KEY,
                "--upstream-kind", "vllm",
                "--upstream-model", "served-model",
                "--upstream-capability", "text_generation",
            ],
        )  # fmt: skip
        procs.append(node)
        node.start().wait_healthy()
        wait_until(lambda: node_status(router.url, "cli-node") == "online", 20, "node online")
        client = openai.OpenAI(
            base_url=f"{router.url}/v1", api_key=create_key(router.url, ["api"]), max_retries=0
        )
        assert [m.id for m in client.models.list()] == ["served-model"]
        completion = client.completions.create(model="served-model", prompt="cli")
        assert completion.choices[0].text == "cli completes: cli"
        node.stop()
    assert UPSTREAM_KEY not in node.log() + router.log()
