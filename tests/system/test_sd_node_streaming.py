"""A StableDiffusion node streams partial images and completed images as server-sent events that
the official SDK parses (``stream=True, partial_images=k``), reports the running job's progress
in its heartbeat, and checks LoRAs before anything runs (the synthetic LoRAs of the
``lora_dir`` fixture as the node-wide LoRA folder).

The node app (create_node_app, real stable-diffusion.cpp on the synthetic SD1 checkpoint at
64x64, 1-4 steps, in the engine's worker process: the default ``cancel = "now"``, so previews,
LoRAs and failures cross the process boundary) is served over loopback HTTP by uvicorn in a
thread of the test process, so the test can read its engine's state; clients are the real
``openai`` SDK and httpx with the node's router credential. The last test goes through real
router and node processes. One test injects a generation failure (sd.cpp cannot be made to fail
mid-job on demand): it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from litestar import Litestar

from llmlb_node.app import create_node_app
from llmlb_node.settings import NodeSettings
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.engine.runners import ImageCall, ImageEvents
from llmlb_node.stable_diffusion.engine.sdcpp_calls import GenerationFailed
from llmlb_node.stable_diffusion.runtime import StableDiffusionRuntime
from tests.support.images_util import decode_b64, gradient, mean_abs_diff, png_bytes
from tests.support.models import DEMO_MODEL, FLUX_LORA, SD1_LORA, ImageSystem
from tests.support.servers import ThreadServer, admin_get, wait_until
from tests.system.test_abandoned import eventually

CANCELLED = re.compile(r"job \d+ \(demo\): cancelled after (\d+) of (\d+) image\(s\)")
STOPPED = re.compile(
    r"job \d+ \(demo\): stopped mid-image \(([^)]+)\) after [\d.]+s, (\d+) of (\d+) image\(s\) done; "
    r"worker killed, model reloaded in [\d.]+s"
)
FAST = {"steps": 1, "seed": 3}


class Node:
    """A node app on loopback, not registered anywhere: its URL, credential and runtime."""

    def __init__(self, app: Litestar, server: ThreadServer) -> None:
        self.app = app
        self.server = server
        self.url = server.url
        self.token: str = app.state.node_token
        self.runtime: StableDiffusionRuntime = app.state.node_runtimes[0]

    @property
    def engine(self) -> SDEngine:
        return self.runtime.engine

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=600)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=600)


@contextlib.contextmanager
def serve(models_dir: Path, **runtime: Any) -> Iterator[Node]:
    settings = NodeSettings(
        router_url="http://127.0.0.1:9",
        models_dir=str(models_dir),
        runtimes=["stable_diffusion"],
        runtime_settings={"stable_diffusion": {"threads": 2, "idle_unload_s": 0, **runtime}},
    )
    app = create_node_app(settings, register=False)
    server = ThreadServer(app).start()
    try:
        yield Node(app, server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node(models_dir: Path, lora_dir: Path) -> Iterator[Node]:
    """The demo model, with the node-wide LoRA folder of the synthetic LoRAs."""
    with serve(models_dir, lora_dir=str(lora_dir)) as served:
        yield served


def events_of(stream: Any) -> list[Any]:
    return list(stream)


def test_sdk_streams_two_partials_then_the_completed_image(node: Node) -> None:
    stream = node.client().images.generate(
        model=DEMO_MODEL,
        prompt="a lighthouse",
        stream=True,
        partial_images=2,
        output_format="png",
        extra_body={"steps": 3, "seed": 11},
    )
    events = events_of(stream)
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events:
        image = decode_b64(event.b64_json)
        assert image.format == "PNG" and image.size == (64, 64)  # previews scaled to the size
        assert event.size == "64x64" and event.output_format == "png"
    assert events[-1].usage.total_tokens == 0
    # The same seed without streaming gives the same final pixels.
    plain = node.client().images.generate(
        model=DEMO_MODEL,
        prompt="a lighthouse",
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 11},
    )
    assert mean_abs_diff(decode_b64(plain.data[0].b64_json), decode_b64(events[-1].b64_json)) == 0


def test_n_images_stream_one_after_the_other_with_their_seeds(node: Node) -> None:
    stream = node.client().images.generate(
        model=DEMO_MODEL,
        prompt="two boats",
        n=2,
        stream=True,
        partial_images=1,
        output_format="jpeg",
        extra_body={"steps": 2, "seed": 40},
    )
    events = events_of(stream)
    summary = [(e.type.rsplit(".", 1)[1], e.image_index, e.seed) for e in events]  # type: ignore[attr-defined]
    assert summary == [
        ("partial_image", 0, 40),
        ("completed", 0, 40),
        ("partial_image", 1, 41),
        ("completed", 1, 41),
    ]
    assert all(decode_b64(e.b64_json).format == "JPEG" for e in events)
    assert mean_abs_diff(decode_b64(events[1].b64_json), decode_b64(events[3].b64_json)) > 1


def test_too_few_steps_give_fewer_partials_and_zero_asked_give_none(node: Node) -> None:
    one_step = events_of(
        node.client().images.generate(
            model=DEMO_MODEL, prompt="x", stream=True, partial_images=3, extra_body=FAST
        )
    )
    assert [e.type for e in one_step] == ["image_generation.completed"]
    none_asked = events_of(
        node.client().images.generate(
            model=DEMO_MODEL, prompt="x", stream=True, partial_images=0, extra_body={"steps": 3, "seed": 1}
        )
    )
    assert [e.type for e in none_asked] == ["image_generation.completed"]


def test_edits_stream_image_edit_events(node: Node) -> None:
    stream = node.client().images.edit(
        model=DEMO_MODEL,
        image=("init.png", png_bytes(gradient()), "image/png"),
        prompt="make it blue",
        stream=True,
        partial_images=1,
        extra_body={"steps": 2, "seed": 5},
    )
    events = events_of(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert decode_b64(events[-1].b64_json).size == (64, 64)


def test_stream_false_keeps_the_json_answer(node: Node) -> None:
    with node.http() as http:
        answer = http.post(
            "/v1/images/generations",
            json={"model": DEMO_MODEL, "prompt": "x", "stream": False, "partial_images": 2, **FAST},
        )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"created", "data", "size", "quality", "output_format", "background"}
    assert body["quality"] == "standard" and body["data"][0]["seed"] == 3


def test_an_error_before_the_first_event_is_a_json_error(node: Node) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        events_of(
            node.client().images.generate(
                model=DEMO_MODEL,
                prompt="x <lora:nope:1>",
                stream=True,
                partial_images=1,
                extra_body=FAST,
            )
        )
    assert refused.value.code == "lora_not_found" and SD1_LORA in refused.value.message


def test_a_failure_after_the_first_event_is_an_error_event(node: Node) -> None:
    """Fault injection: the engine's runner fails its first, then its second image as
    stable-diffusion.cpp would (sd.cpp cannot be made to fail mid-job on demand). Failing at once
    is a JSON 500; after the first image was streamed, an error event that the SDK raises."""
    node.client().images.generate(
        model=DEMO_MODEL, prompt="warm", response_format="b64_json", extra_body=FAST
    )
    runner = node.engine.runner
    real = runner.generate
    calls = 0
    failing_call = 1

    def fails(call: ImageCall, events: ImageEvents) -> Any:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise GenerationFailed("stable-diffusion.cpp failed to generate: injected failure")
        return real(call, events)

    runner.generate = fails  # type: ignore[method-assign]
    try:
        with pytest.raises(openai.InternalServerError) as at_once:
            node.client().images.generate(model=DEMO_MODEL, prompt="x", stream=True, extra_body=FAST)
        assert at_once.value.code == "generation_failed"
        calls, failing_call = 0, 2
        stream = node.client().images.generate(
            model=DEMO_MODEL, prompt="x", n=2, stream=True, partial_images=0, extra_body=FAST
        )
        seen = []
        with pytest.raises(openai.APIError) as failed:
            for event in stream:
                seen.append(event.type)
        assert seen == ["image_generation.completed"]
        assert "injected failure" in failed.value.message
        assert isinstance(failed.value.body, dict) and failed.value.body["code"] == "generation_failed"
    finally:
        del runner.generate
    assert node.engine.active_jobs == 0


def test_a_client_that_leaves_stops_the_job_mid_image(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """The node's default (``cancel = "now"``): the worker process is killed in the image in
    progress, and the model is loaded again in a fresh one."""
    with node.http() as http, caplog.at_level("INFO", logger="llmlb.node.sd"):
        body = {"model": DEMO_MODEL, "prompt": "x", "n": 4, "stream": True, "partial_images": 1, "steps": 3}
        with http.stream("POST", "/v1/images/generations", json=body) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            first = next(answer.iter_lines())
            assert first == "event: image_generation.partial_image"
        # Left after the first partial image of image 1 of 4.
        wait_until(lambda: STOPPED.search(caplog.text) is not None, 60, "the job to stop and reload")
    [(reason, done, total)] = STOPPED.findall(caplog.text)
    assert reason == "client gone" and total == "4" and int(done) <= 2
    assert not CANCELLED.search(caplog.text)
    assert node.engine.active_jobs == 0 and node.engine.loaded is not None  # warm again


def test_running_job_progress_is_in_the_runtime_load_and_the_heartbeat(node: Node) -> None:
    link = node.app.state.node_link
    seen: list[Any] = []
    beats: list[Any] = []
    result: list[Any] = []

    def generate() -> None:
        result.append(
            node.client().images.generate(
                model=DEMO_MODEL,
                prompt="x",
                n=2,
                response_format="b64_json",
                extra_body={"steps": 3, "seed": 1},
            )
        )

    worker = threading.Thread(target=generate)
    worker.start()
    while worker.is_alive():
        seen.extend(node.runtime.load().jobs)
        beats.extend(link.heartbeat_message().jobs)
        time.sleep(0.05)
    worker.join()
    assert result and len(result[0].data) == 2
    assert seen and beats
    assert {(p.model, p.images, p.steps) for p in seen} == {(DEMO_MODEL, 2, 3)}
    assert {p.image for p in seen} == {1, 2} and max(p.step for p in seen) >= 2
    assert node.runtime.load().jobs == [] and link.heartbeat_message().jobs == []


# --- LoRAs ------------------------------------------------------------------------------------


def generate(node: Node, prompt: str, **extra: Any) -> Any:
    result = node.client().images.generate(
        model=DEMO_MODEL, prompt=prompt, response_format="b64_json", extra_body={**FAST, **extra}
    )
    return decode_b64(result.data[0].b64_json)


def test_a_lora_changes_the_pixels_by_tag_or_extra_and_is_removed_after(node: Node) -> None:
    before = generate(node, "a cat")
    tagged = generate(node, f"a cat <lora:{SD1_LORA}:1>")
    extra = generate(node, "a cat", loras=[{"name": SD1_LORA, "weight": 1.0}])
    after = generate(node, "a cat")
    assert mean_abs_diff(before, tagged) > 2  # the LoRA measurably changes the image
    assert mean_abs_diff(tagged, extra) == 0  # both ways apply the same LoRA
    assert mean_abs_diff(before, after) == 0  # and it is gone for the next request


def test_lora_tags_with_paths_never_reach_stable_diffusion_cpp(
    node: Node, lora_dir: Path, tmp_path: Path
) -> None:
    """A real LoRA file outside the LoRA folders, named by absolute and relative path: the binding
    would load it; the node answers 400 before any job runs."""
    outside = tmp_path / "evil.safetensors"
    shutil.copy(lora_dir / f"{SD1_LORA}.safetensors", outside)
    jobs_before = node.engine._job_counter
    relative = Path("..") / ".." / outside.relative_to("/").with_suffix("")
    for tag in (f"<lora:{outside}:1>", f"<lora:{outside.with_suffix('')}:1>", f"<lora:{relative}:1>"):
        with pytest.raises(openai.BadRequestError) as refused:
            generate(node, f"a cat {tag}")
        assert refused.value.code == "lora_not_found"
        assert f"Available LoRAs: {FLUX_LORA}, {SD1_LORA}" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        generate(node, "a cat", negative_prompt=f"<lora:{outside}:1>")
    assert refused.value.code == "lora_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        generate(node, f"a cat <lora:{SD1_LORA}:lots>")
    assert refused.value.code == "invalid_lora_weight"
    with pytest.raises(openai.BadRequestError) as refused:
        generate(node, "a cat", loras=[{"name": f"../{SD1_LORA}", "weight": 1}])
    assert refused.value.param == "loras"  # the schema refuses a name that could be a path
    assert node.engine._job_counter == jobs_before


def test_the_advert_says_what_the_model_supports(node: Node) -> None:
    [advert] = node.runtime.models()
    details = advert.details
    assert details["family"] == "sd1" and details["native_size"] == "64x64"
    assert details["label"] == "Stable Diffusion 1.x"
    assert details["defaults"] == {"steps": 2, "cfg_scale": 1.0, "guidance": None, "sampler": "euler"}
    assert details["supports"] == {
        "mask": True,
        "reference_images": 0,
        "loras": [FLUX_LORA, SD1_LORA],
        "partial_images": True,
    }


def test_more_images_than_the_model_takes_is_a_400_naming_the_limit(node: Node) -> None:
    image = ("a.png", png_bytes(gradient()), "image/png")
    with pytest.raises(openai.BadRequestError) as refused:
        node.client().images.edit(model=DEMO_MODEL, image=[image, image], prompt="x", extra_body=FAST)
    error = refused.value
    assert error.code == "too_many_images" and error.param == "image"
    assert "takes one image and no reference images" in error.message


# --- through real router and node processes ---------------------------------------------------


def test_streaming_and_job_progress_through_router_and_node_processes(image_system: ImageSystem) -> None:
    """The SDK against the router, a real node process behind it: partial images then the
    completed image; while a job runs, ``/v0/nodes`` shows its progress from the heartbeats."""
    client = image_system.client()
    events = list(
        client.images.generate(
            model=DEMO_MODEL,
            prompt="a harbour",
            stream=True,
            partial_images=2,
            extra_body={"steps": 3, "seed": 2},
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert all(decode_b64(e.b64_json).size == (64, 64) for e in events)

    def running_jobs() -> list[dict[str, Any]]:
        return [
            job for node in admin_get(image_system.router.url, "/v0/nodes")["data"] for job in node["jobs"]
        ]

    wait_until(lambda: not running_jobs(), 10, "a heartbeat showing the streamed job ended")
    progress: list[dict[str, Any]] = []
    worker = threading.Thread(
        target=lambda: client.images.generate(
            model=DEMO_MODEL, prompt="x", n=2, response_format="b64_json", extra_body={"steps": 4, "seed": 1}
        )
    )
    worker.start()
    while worker.is_alive():
        progress.extend(running_jobs())
        time.sleep(0.1)
    worker.join()
    assert progress, "no heartbeat showed the running job"
    assert {(p["model"], p["images"], p["steps"]) for p in progress} == {(DEMO_MODEL, 2, 4)}
    assert max(p["step"] for p in progress) >= 1


async def test_a_streamed_request_whose_client_leaves_while_queued_never_runs(node: Node) -> None:
    engine = node.engine
    auth = {"authorization": f"Bearer {node.token}"}
    body = {"model": DEMO_MODEL, "prompt": "x", "stream": True, "partial_images": 1, "steps": 2}
    jobs_before = engine._job_counter
    async with httpx.AsyncClient(base_url=node.url, headers=auth, timeout=120) as client:
        running = asyncio.create_task(client.post("/v1/images/generations", json={**body, "steps": 6}))
        await eventually(lambda: engine.active_jobs == 1, 60, "the first job to run")
        queued = asyncio.create_task(client.post("/v1/images/generations", json=body))
        await eventually(lambda: engine.waiting_jobs == 1, 10, "the streamed job to queue")
        queued.cancel()  # the client leaves before its first event
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        await eventually(lambda: engine.waiting_jobs == 0, 2, "the node to drop the queued job")
        assert not running.done()
        assert (await running).status_code == 200
    assert engine._job_counter == jobs_before + 1  # the job whose client left never ran
