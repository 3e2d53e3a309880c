"""Streamed images through the real router (in-process, real loopback HTTP) with the official
openai SDK (3.54) as the client.

The nodes are FAKES (``tests.support.fake_node.FakeNode``): loopback servers that register with
a node key and answer ``stream: true`` with the server-sent events of the issue-10 wire, or
with whatever broken stream a test needs. A fake is right here: what is tested is the router
(relaying, checking, merging parts, failover, error events, cancelling), and a real node cannot
be made to send bad events; the real node's streaming (sd.cpp previews) is tested by the node's
own tests. Also here: the router's checks before it sends an edit (reference images, masks,
LoRAs), ``/v1/models`` details and the jobs of ``/v0/nodes``, against the same fake adverts.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)
from PIL import Image

from tests.support.fake_node import (
    Answer,
    EventAnswer,
    FakeNode,
    image_event,
    image_events_as_asked,
    png_b64,
    sse,
)
from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, admin_get, create_key, wait_until

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
SUPPORTS = {"mask": True, "reference_images": 0, "loras": ["pixel", "ink"], "partial_images": True}


def advert(model: str = "img", **supports: Any) -> dict[str, Any]:
    return {
        "id": model,
        "capabilities": ["image_generation", "image_edit"],
        "runtime": "stable_diffusion",
        "details": {
            "family": "sd1",
            "label": "Stable Diffusion 1.x",
            "native_size": "64x64",
            "supports": {**SUPPORTS, **supports},
        },
    }


class System:
    def __init__(self, tmp: Path) -> None:
        self.router: ThreadServer = start_router(tmp / "data", node_timeout_s=5, suspect_cooldown_s=60)
        self.nodes: list[FakeNode] = []
        self.client = openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=ADMIN_KEY, max_retries=0)

    def add_node(self, name: str, models: list[dict[str, Any]] | None = None, slots: int = 1) -> FakeNode:
        key = create_key(self.router.url, ["node"], name=name)
        node = FakeNode(self.router.url, key, name, models or [advert()], slots=slots).start()
        self.nodes.append(node)
        wait_until(lambda: self.node_view(name)["status"] == "online", 10, f"{name} online")
        return node

    def node_view(self, name: str) -> dict[str, Any]:
        return next(n for n in admin_get(self.router.url, "/v0/nodes")["data"] if n["id"] == name)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[httpx.Response]:
        with httpx.stream(
            "POST",
            self.router.url + path,
            json=body,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        ) as response:
            yield response

    def stop(self) -> None:
        self.client.close()
        for node in self.nodes:
            node.stop()
        self.router.stop()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    made = System(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def png_file() -> io.BytesIO:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(out, format="PNG")
    out.seek(0)
    out.name = "in.png"
    return out


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw SSE answer (the router writes one data line per event)."""
    out = []
    for block in response.read().decode().split("\n\n"):
        if block:
            head, data = block.split("\n", 1)
            out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def stream_two_partials(system: System) -> Any:
    return system.client.images.generate(model="img", prompt="p", stream=True, partial_images=2)


def suspect(system: System, name: str) -> bool:
    view = system.node_view(name)
    return bool(view["suspect"]) and "bad answer" in view["recent_failures"][-1]["reason"]


# --- the SDK's streaming calls ----------------------------------------------------------------
def test_sdk_generate_stream_yields_partials_then_completed_for_each_image_over_two_nodes(
    system: System,
) -> None:
    a, b = system.add_node("node-a"), system.add_node("node-b")
    for node in (a, b):
        node.answers[GENERATIONS] = lambda r: image_events_as_asked(r, delay_s=0.02)
    stream = system.client.images.generate(
        model="img",
        prompt="a red fox",
        stream=True,
        partial_images=2,
        n=2,
        size="256x256",
        extra_body={"seed": 40},
    )
    events = list(stream)
    assert all(isinstance(e, (ImageGenPartialImageEvent, ImageGenCompletedEvent)) for e in events)
    by_image: dict[int, list[str]] = {}
    for event in events:
        index = event.model_extra["image_index"] if event.model_extra else 0
        label = f"p{event.partial_image_index}" if event.type.endswith("partial_image") else "done"
        by_image.setdefault(index, []).append(label)
        assert base64.b64decode(event.b64_json).startswith(b"\x89PNG")
        assert event.size == "256x256" and event.output_format == "png"
    assert by_image == {0: ["p0", "p1", "done"], 1: ["p0", "p1", "done"]}
    assert isinstance(events[-1], ImageGenCompletedEvent) and events[-1].usage.total_tokens == 0
    # The job was split, one image per node, each sent with stream, partial_images and its seed.
    sent = [json.loads(n.received[0].body) for n in (a, b)]
    assert sorted((s["n"], s["seed"]) for s in sent) == [(1, 40), (1, 41)]
    assert all(s["stream"] is True and s["partial_images"] == 2 for s in sent)
    assert all(s["response_format"] == "b64_json" and s["size"] == "256x256" for s in sent)
    seeds = {e.model_extra["image_index"]: e.model_extra["seed"] for e in events if e.model_extra}
    assert seeds == {0: 40, 1: 41}
    for name in ("node-a", "node-b"):
        view = system.node_view(name)
        assert (view["inflight"], view["abandoned"], view["completed"]) == (0, 0, 1)


def test_n_3_over_two_nodes_numbers_the_images_0_to_2(system: System) -> None:
    for name in ("node-a", "node-b"):
        system.add_node(name).answers[GENERATIONS] = image_events_as_asked
    events = list(system.client.images.generate(model="img", prompt="p", stream=True, n=3))
    completed = sorted(e.model_extra["image_index"] for e in events if e.type.endswith("completed"))
    assert completed == [0, 1, 2] and len(events) == 3  # partial_images defaults to 0


def test_sdk_edit_stream_yields_image_edit_events(system: System) -> None:
    node = system.add_node("node-a")
    node.answers[EDITS] = image_events_as_asked
    stream = system.client.images.edit(
        model="img",
        image=png_file(),
        prompt="make it blue",
        stream=True,
        partial_images=1,
        extra_body={"loras": [{"name": "ink", "weight": 0.5}]},
    )
    events = list(stream)
    assert [type(e) for e in events] == [ImageEditPartialImageEvent, ImageEditCompletedEvent]
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    form = node.received[0].form()
    assert form["stream"] == "true" and form["partial_images"] == "1" and form["n"] == "1"
    assert json.loads(form["loras"]) == [{"name": "ink", "weight": 0.5}]  # the SDK's fields, as JSON


def test_response_headers_of_a_stream(system: System) -> None:
    system.add_node("node-a").answers[GENERATIONS] = image_events_as_asked
    for response in system.stream(GENERATIONS, {"model": "img", "prompt": "p", "stream": True}):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-llmlb-node"] == "node-a"
        assert response.headers["x-request-id"].startswith("req_")
        assert [name for name, _ in events_of(response)] == ["image_generation.completed"]


# --- what goes wrong --------------------------------------------------------------------------
def huge_event() -> bytes:
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 400_000).decode()
    return sse(
        "image_generation.partial_image", image_event("partial_image", partial_image_index=1, b64_json=junk)
    )


FIRST = sse("image_generation.partial_image", image_event("partial_image", partial_image_index=0))
BAD_AFTER_FIRST = {
    "bad base64": [sse("image_generation.completed", image_event("completed", b64_json="@@not base64@@"))],
    "wrong type": [sse("image_edit.completed", image_event("completed", edit=True))],
    "too many partials": [
        sse("image_generation.partial_image", image_event("partial_image", partial_image_index=k))
        for k in (1, 2)
    ],
    "missing completed": [],
    "huge event": [huge_event()],
    "not json": [b"event: image_generation.completed\ndata: {nope\n\n"],
}


@pytest.mark.parametrize("rest", list(BAD_AFTER_FIRST.values()), ids=list(BAD_AFTER_FIRST))
def test_a_bad_event_after_the_first_ends_the_stream_with_an_error_event(
    system: System, rest: list[bytes]
) -> None:
    system.add_node("node-a").answers[GENERATIONS] = EventAnswer([FIRST, *rest])
    stream = system.client.images.generate(model="img", prompt="p", stream=True, partial_images=2)
    got = []
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            got.append(event)
    assert got and got[0].type == "image_generation.partial_image"  # the good ones came through
    assert caught.value.body["code"] == "bad_upstream_response"  # type: ignore[index]
    assert "node-a" in caught.value.message and "request id: req_" in caught.value.message
    assert suspect(system, "node-a")


def test_the_raw_error_event_is_openai_shaped(system: System) -> None:
    system.add_node("node-a").answers[GENERATIONS] = EventAnswer([FIRST])
    body = {"model": "img", "prompt": "p", "stream": True, "partial_images": 1}
    for response in system.stream(GENERATIONS, body):
        events = events_of(response)
    assert [name for name, _ in events] == ["image_generation.partial_image", "error"]
    error = events[1][1]
    assert error["type"] == "error" and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "server_error"


def test_a_node_that_breaks_off_mid_stream_is_an_error_event(system: System) -> None:
    system.add_node("node-a").answers[GENERATIONS] = EventAnswer([FIRST], then_break=True)
    stream = system.client.images.generate(model="img", prompt="p", stream=True, partial_images=2)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.body["code"] == "upstream_stream_broken"  # type: ignore[index]
    view = system.node_view("node-a")
    assert view["suspect"] and "stream broke" in view["recent_failures"][-1]["reason"]


def test_a_nodes_error_event_keeps_its_code_not_its_message(system: System) -> None:
    failure = sse(
        "error", {"type": "error", "error": {"message": "CUDA OOM at 0xdead", "code": "generation_failed"}}
    )
    system.add_node("node-a").answers[GENERATIONS] = EventAnswer([FIRST, failure])
    with pytest.raises(openai.APIError) as caught:
        list(system.client.images.generate(model="img", prompt="p", stream=True, partial_images=2))
    assert caught.value.body["code"] == "generation_failed"  # type: ignore[index]
    assert "0xdead" not in caught.value.message and "node-a" in caught.value.message


@pytest.mark.parametrize(
    "broken",
    [
        Answer(status=500, body=b'{"error": {"message": "boom"}}'),
        EventAnswer([sse("image_generation.completed", image_event("completed", b64_json="@@"))]),
        EventAnswer([b"event: image_generation.completed\ndata: {\n\n"]),
        Answer(body=json.dumps({"created": 1, "data": [{"b64_json": png_b64()}]}).encode()),  # JSON, not SSE
        EventAnswer([], then_break=True),
    ],
    ids=["5xx", "bad first event", "garbage", "json answer", "broken before any event"],
)
def test_a_node_that_fails_before_its_first_event_is_replaced(system: System, broken: Any) -> None:
    bad = system.add_node("node-a")  # registered first: tried first
    good = system.add_node("node-b")
    bad.answers[GENERATIONS] = broken
    good.answers[GENERATIONS] = image_events_as_asked
    events = list(system.client.images.generate(model="img", prompt="p", stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert len(bad.received) == 1 and len(good.received) == 1
    assert system.node_view("node-a")["suspect"]


def test_a_node_4xx_before_any_event_is_a_json_error(system: System) -> None:
    error = {
        "error": {"message": "Unknown LoRA 'x'", "type": "invalid_request_error", "code": "lora_not_found"}
    }
    system.add_node("node-a").answers[GENERATIONS] = Answer.json(error, status=400)
    with pytest.raises(openai.BadRequestError) as caught:
        list(system.client.images.generate(model="img", prompt="p <lora:x:1>", stream=True))
    assert caught.value.code == "lora_not_found" and "node 'node-a'" in caught.value.message
    assert not system.node_view("node-a")["suspect"]


def test_a_failing_part_of_a_fanned_out_job_closes_the_other(system: System) -> None:
    a, b = system.add_node("node-a"), system.add_node("node-b")
    a.answers[GENERATIONS] = EventAnswer([FIRST], hold_s=0.3, then_break=True)
    b.answers[GENERATIONS] = EventAnswer([FIRST], hold_s=30)  # still working
    body = {"model": "img", "prompt": "p", "stream": True, "partial_images": 2, "n": 2}
    for response in system.stream(GENERATIONS, body):
        names = [name for name, _ in events_of(response)]
    assert names[-1] == "error" and names.count("image_generation.partial_image") == 2
    wait_until(lambda: b.closed_early == [GENERATIONS], 10, "node-b's stream closed by the router")
    wait_until(lambda: system.node_view("node-b")["inflight"] == 0, 5, "node-b's lease released")


def test_a_client_that_leaves_closes_the_upstream(system: System) -> None:
    node = system.add_node("node-a")
    node.answers[GENERATIONS] = EventAnswer([FIRST], hold_s=60)
    body = {"model": "img", "prompt": "p", "stream": True, "partial_images": 2}
    for response in system.stream(GENERATIONS, body):
        chunks = response.iter_raw()  # kept: a dropped iterator closes the response at once
        first = next(chunks)
        assert first.startswith(b"event: image_generation.partial_image")
        assert system.node_view("node-a")["inflight"] == 1
    # The client hung up with the node still working: the router closes the node's stream.
    wait_until(lambda: node.closed_early == [GENERATIONS], 10, "the node's stream closed by the router")
    wait_until(lambda: system.node_view("node-a")["inflight"] == 0, 5, "the lease released")
    assert not system.node_view("node-a")["suspect"]


def test_a_client_that_leaves_before_the_first_event_closes_the_upstream(system: System) -> None:
    node = system.add_node("node-a")
    node.answers[GENERATIONS] = EventAnswer([b": preparing\n\n", FIRST], delay_s=30)
    body = {"model": "img", "prompt": "p", "stream": True, "partial_images": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            system.router.url + GENERATIONS,
            json=body,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=httpx.Timeout(30, read=1.0),
        )
    wait_until(lambda: node.closed_early == [GENERATIONS], 10, "the node's stream closed by the router")
    wait_until(lambda: system.node_view("node-a")["inflight"] == 0, 5, "the lease released")


# --- checks before anything is sent -----------------------------------------------------------
def test_url_cannot_be_streamed(system: System) -> None:
    node = system.add_node("node-a")
    with pytest.raises(openai.BadRequestError) as caught:
        system.client.images.generate(model="img", prompt="p", stream=True, response_format="url")
    assert caught.value.param == "response_format" and not node.received


def test_an_unknown_lora_is_refused_before_any_node_is_asked(system: System) -> None:
    node = system.add_node("node-a")
    with pytest.raises(openai.BadRequestError) as caught:
        system.client.images.generate(
            model="img", prompt="p", extra_body={"loras": [{"name": "pixel"}, {"name": "watercolor"}]}
        )
    assert caught.value.code == "lora_not_found" and caught.value.param == "loras"
    assert "'watercolor'" in caught.value.message and "available: ink, pixel" in caught.value.message
    assert not node.received


def test_reference_images_are_checked_against_the_online_models(system: System) -> None:
    node = system.add_node("node-a", [advert("img"), advert("kontext", reference_images=4)])
    node.answers[EDITS] = lambda r: Answer.json(
        {"created": 1, "data": [{"b64_json": png_b64()}], "output_format": "png"}
    )
    with pytest.raises(openai.BadRequestError) as caught:
        system.client.images.edit(model="img", image=[png_file(), png_file()], prompt="p")
    assert caught.value.param == "image" and caught.value.code == "too_many_images"
    assert "model 'img' takes one image and no reference images" in caught.value.message
    assert "online models that take reference images: kontext (up to 4)" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="takes at most 4 image"):
        system.client.images.edit(model="kontext", image=[png_file() for _ in range(5)], prompt="p")
    assert not node.received
    system.client.images.edit(model="kontext", image=[png_file() for _ in range(4)], prompt="p")
    assert len(node.received) == 1


# --- what clients and admins see --------------------------------------------------------------
def test_models_list_what_each_model_can_do(system: System) -> None:
    system.add_node("node-a", [advert("img", loras=["ink", "pixel", "x"])])
    system.add_node("node-b", [advert("img", loras=["pixel", "ink"], reference_images=2)])
    listed = {m.id: m for m in system.client.models.list()}
    details = listed["img"].model_extra["details"]  # type: ignore[index]
    assert details == {
        "family": "sd1",
        "label": "Stable Diffusion 1.x",
        "native_size": "64x64",
        "supports": {"mask": True, "reference_images": 0, "loras": ["ink", "pixel"], "partial_images": True},
    }
    admin = admin_get(system.router.url, "/v0/models")
    assert [m["details"] for m in admin["data"] if m["id"] == "img"] == [details]


def test_a_node_with_hostile_details_cannot_break_models(system: System) -> None:
    hostile = advert("img")
    hostile["details"] = {"family": {"$": 1}, "native_size": "1x" + "9" * 50, "supports": [1, 2, 3]}
    system.add_node("node-a", [hostile])
    response = httpx.get(system.router.url + "/v1/models", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200 and response.json()["data"][0]["details"] == {}


def test_nodes_show_their_running_jobs(system: System) -> None:
    node = system.add_node("node-a")
    node.jobs = [{"model": "img", "step": 7, "steps": 20, "image": 1, "images": 2, "elapsed_s": 3.25}]
    wait_until(lambda: system.node_view("node-a")["jobs"] == node.jobs, 5, "the jobs in /v0/nodes")
    node.jobs = []
    wait_until(lambda: system.node_view("node-a")["jobs"] == [], 5, "the jobs gone from /v0/nodes")
