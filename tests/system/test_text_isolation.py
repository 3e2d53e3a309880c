"""Text and audio next to images: image load does not slow chat down, and each capability can be
switched off without touching the others.

The chat backend is the loopback test server of ``tests/text_backends.py`` (it answers at once,
so what is measured is the router, not a model competing for the same two CPU cores); the image
node is a real node process running stable-diffusion.cpp on the synthetic checkpoint.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.inproc import start_router
from tests.support.servers import Proc, create_key, node_proc, router_proc, wait_until
from tests.support.text_fixtures import (
    ADMIN,
    AUDIO_MODELS,
    UPSTREAM_KEY,
    Backend,
    backend,
    register_endpoint,
    wait_endpoint,
)

CHAT_SAMPLES = 40


def _chat_latencies(client: openai.OpenAI, samples: int, min_seconds: float = 0.0) -> list[float]:
    latencies: list[float] = []
    started = time.monotonic()
    while len(latencies) < samples or time.monotonic() - started < min_seconds:
        t0 = time.perf_counter()
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}]
        )
        latencies.append(time.perf_counter() - t0)
        assert reply.choices[0].message.content == "side heard: hi"
        time.sleep(0.02)
    return latencies


def test_image_generations_do_not_slow_chat_down(tmp_path: Path, models_dir: Path, procs: list[Proc]) -> None:
    router = router_proc(
        tmp_path, env={"LLMLB_NODE_TIMEOUT_S": "5", "LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.5"}
    )
    procs.append(router)
    router.start().wait_healthy()
    # One stable-diffusion.cpp thread: the other core stays for the router, the chat backend
    # and this test (on two cores, more would measure the OS scheduler, not the router).
    sd = node_proc(
        tmp_path,
        router.url,
        models_dir,
        create_key(router.url, ["node"]),
        name="sd",
        extra=["--threads", "1"],
    )
    procs.append(sd)
    sd.start().wait_healthy(60).wait_online(router.url)
    api_key = create_key(router.url, ["api"])
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0, timeout=30)
    with backend("side", ["tiny-chat"]) as side:
        register_endpoint(router.url, "side", side.url, api_key=UPSTREAM_KEY)
        wait_endpoint(router.url, "side")
        _chat_latencies(client, 10)  # warm-up (connections, code paths)
        idle = _chat_latencies(client, CHAT_SAMPLES)

        stop = threading.Event()
        images_done: list[float] = []
        image_errors: list[BaseException] = []

        def image_load() -> None:
            image_client = openai.OpenAI(
                base_url=f"{router.url}/v1", api_key=api_key, max_retries=0, timeout=120
            )
            while not stop.is_set():
                try:
                    result = image_client.images.generate(
                        model="demo",
                        prompt="a lighthouse",
                        response_format="b64_json",
                        extra_body={"steps": 1},
                    )
                    assert result.data[0].b64_json
                    images_done.append(time.monotonic())
                except BaseException as exc:
                    image_errors.append(exc)
                    return

        loaders = [threading.Thread(target=image_load, daemon=True) for _ in range(2)]
        for loader in loaders:
            loader.start()
        try:
            # Wait until the node is busy generating, then measure chat for a while.
            def busy() -> bool:
                nodes = httpx.get(f"{router.url}/v0/nodes", headers=ADMIN).json()["data"]
                return any(n["name"] == "sd" and n["inflight"] > 0 for n in nodes)

            wait_until(busy, 30, "image generation running")
            loaded_from = time.monotonic()
            loaded = _chat_latencies(client, CHAT_SAMPLES, min_seconds=3.0)
            loaded_until = time.monotonic()
        finally:
            stop.set()
            for loader in loaders:
                loader.join(120)
    assert not image_errors, image_errors
    assert any(loaded_from <= t <= loaded_until + 60 for t in images_done), "no image finished: no real load"
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    print(
        f"\nchat p50 idle {idle_p50 * 1000:.1f} ms, under image load {loaded_p50 * 1000:.1f} ms "
        f"({len(loaded)} requests, {len(images_done)} images)"
    )
    assert loaded_p50 <= 3 * idle_p50 + 0.050, (idle_p50, loaded_p50)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Backend]:
    with backend("side", ["tiny-chat", *AUDIO_MODELS]) as up:
        yield up


def _probe(router_url: str, api_key: str) -> dict[str, int]:
    headers = {"authorization": f"Bearer {api_key}"}
    chat = httpx.post(
        f"{router_url}/v1/chat/completions",
        json={"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    speech = httpx.post(
        f"{router_url}/v1/audio/speech",
        json={"model": "tts-tiny", "voice": "alloy", "input": "x"},
        headers=headers,
    )
    transcription = httpx.post(
        f"{router_url}/v1/audio/transcriptions",
        files={"file": ("a.wav", b"RIFF....")},
        data={"model": "whisper-tiny"},
        headers=headers,
    )
    # With images enabled an unknown model is a 404 from the route (model_not_found); with images
    # disabled there is no route at all (the router's "Unknown endpoint" 404).
    image = httpx.post(
        f"{router_url}/v1/images/generations", json={"model": "nope", "prompt": "x"}, headers=headers
    )
    return {
        "chat": chat.status_code,
        "speech": speech.status_code,
        "transcription": transcription.status_code,
        "images": 1 if image.json()["error"]["code"] == "model_not_found" else 0,
    }


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        (None, {"chat": 200, "speech": 200, "transcription": 200, "images": 1}),
        (["text", "audio"], {"chat": 200, "speech": 200, "transcription": 200, "images": 0}),
        (["images"], {"chat": 404, "speech": 404, "transcription": 404, "images": 1}),
        (["text", "images"], {"chat": 200, "speech": 404, "transcription": 404, "images": 1}),
        (["audio", "images"], {"chat": 404, "speech": 200, "transcription": 200, "images": 1}),
    ],
)
def test_capabilities_switch_on_and_off_independently(
    tmp_path: Path, upstream: Backend, capabilities: list[str] | None, expected: dict[str, int]
) -> None:
    router = start_router(tmp_path / "data", capabilities=capabilities)
    try:
        register_endpoint(router.url, "side", upstream.url, api_key=UPSTREAM_KEY)
        api_key = create_key(router.url, ["api"])
        assert _probe(router.url, api_key) == expected
        listed = {m["id"] for m in httpx.get(f"{router.url}/v1/models", headers=ADMIN).json()["data"]}
        assert ("tiny-chat" in listed) == (expected["chat"] == 200)
        assert ("tts-tiny" in listed) == (expected["speech"] == 200)
    finally:
        router.stop()
