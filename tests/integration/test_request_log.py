"""The request log, request ids, JSON logs and metrics, over real loopback HTTP.

The router and the node each log one ``llmlb.access`` line per request; the router sends the
request's id to the node, so both lines (and the node's error) carry the id the client sees. In
process (router and nodes as uvicorn threads) the lines are read with caplog; the JSON format,
uvicorn's logger name and a real stable-diffusion.cpp node's generation report are checked on
real processes and their log files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import post
from litestar.handlers import BaseRouteHandler
from prometheus_client.parser import text_string_to_metric_families

from llmlb_node.api import ModelAdvert, Runtime, RuntimeContext, RuntimeLoad, RuntimeType
from llmlb_node.api import hookimpl as node_hookimpl
from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.models import ImageSystem
from tests.support.servers import ADMIN_KEY, Proc, ThreadServer, create_key, router_proc, wait_until

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
ACCESS = "llmlb.access"


# --- a node runtime that fails every job (its model: boom-1) ----------------------------------
class BoomRuntime(Runtime):
    type_name = "boom"

    def __init__(self, context: RuntimeContext[Any]) -> None:
        self.context = context

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id="boom-1", capabilities=["echo"], runtime="boom")]

    def load(self) -> RuntimeLoad:
        return RuntimeLoad()

    def routes(self) -> list[BaseRouteHandler]:
        @post("/v1/echo", status_code=200)
        async def echo() -> None:
            raise RuntimeError("the engine fell over")

        return [echo]


class BoomRuntimePlugin:
    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(RuntimeType(name="boom", factory=BoomRuntime))


# --- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def echo_system(tmp_path: Path) -> Iterator[ThreadServer]:
    """A router with the echo capability, a one-slot echo node and a failing node."""
    servers: list[ThreadServer] = []
    try:
        router = start_router(tmp_path / "data", plugins=[EchoCapability()])
        servers.append(router)
        servers.append(
            start_node(router.url, [EchoRuntimePlugin(slots=1)], name="echo-node", runtimes=["echo"])
        )
        servers.append(start_node(router.url, [BoomRuntimePlugin()], name="boom-node", runtimes=["boom"]))
        yield router
    finally:
        for server in reversed(servers):
            server.stop()


def access_lines(caplog: pytest.LogCaptureFixture, rid: str) -> list[dict[str, Any]]:
    """The request log's records of request ``rid`` (router's and node's), as their fields."""
    return [
        r.access.fields()  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == ACCESS and r.access.request_id == rid  # type: ignore[attr-defined]
    ]


def metric_samples(router_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{router_url}/metrics", headers=AUTH, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- in process ----------------------------------------------------------------------------------
def test_router_and_node_log_one_line_each_with_the_clients_request_id(
    echo_system: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rid = f"trace-{uuid.uuid4().hex[:8]}"
    response = httpx.post(
        f"{echo_system.url}/v1/echo",
        json={"model": "echo-1", "text": "hi"},
        headers={**AUTH, "x-request-id": rid},
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == rid
    wait_until(lambda: len(access_lines(caplog, rid)) == 2, 5, "both access lines")
    node_line, router_line = sorted(access_lines(caplog, rid), key=lambda f: "model" in f)
    assert router_line["route"] == node_line["route"] == "/v1/echo"
    assert router_line["status"] == node_line["status"] == 200
    assert (router_line["model"], router_line["node"]) == ("echo-1", "echo-node")
    assert router_line["bytes_in"] == len(b'{"model":"echo-1","text":"hi"}')
    assert router_line["bytes_out"] == len(response.content)
    assert "model" not in node_line  # the node logs what it knows: the route, not the router's view
    # Both lines time the request. (Not compared: the node's line ends when its app has returned,
    # after its last byte went out, and the router may read that byte and log first.)
    assert router_line["duration_s"] > 0 and node_line["duration_s"] > 0


def test_a_queued_request_logs_and_counts_its_wait(
    echo_system: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=echo_system.url, headers=AUTH, timeout=30) as client:

            async def call(delay: float, rid: str) -> httpx.Response:
                return await client.post(
                    "/v1/echo", json={"model": "echo-1", "delay": delay}, headers={"x-request-id": rid}
                )

            first = asyncio.create_task(call(0.6, "first"))
            await asyncio.sleep(0.2)
            return [await call(0.0, "second"), await first]

    second, _ = asyncio.run(both())
    assert second.headers["x-queue-status"] == "queued"
    waited_ms = int(second.headers["x-queue-wait-ms"])
    assert waited_ms >= 200
    wait_until(lambda: any("model" in f for f in access_lines(caplog, "second")), 5, "router line")
    [line] = [f for f in access_lines(caplog, "second") if "model" in f]
    assert line["queue_wait_s"] == pytest.approx(waited_ms / 1000, abs=0.002)
    samples = metric_samples(echo_system.url)
    assert metric(samples, "llmlb_model_queue_wait_seconds_sum", model="echo-1") >= waited_ms / 1000 - 0.002
    assert metric(samples, "llmlb_model_requests_total", model="echo-1") == 2


def test_a_node_failure_quotes_the_same_request_id_on_the_node_the_router_and_the_client(
    echo_system: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rid = f"trace-{uuid.uuid4().hex[:8]}"
    response = httpx.post(
        f"{echo_system.url}/v1/echo",
        json={"model": "boom-1"},
        headers={**AUTH, "x-request-id": rid},
        timeout=10,
    )
    assert response.status_code == 500  # the node's status (a 5xx the SDKs know is passed on)
    assert response.json()["error"]["message"] == f"Node 'boom-node' failed (HTTP 500) (request id: {rid})"
    node_error = next(r for r in caplog.records if r.name == "llmlb.errors")
    assert node_error.getMessage().startswith(f"Internal server error (request id: {rid}) on POST /v1/echo")
    assert "the engine fell over" in str(node_error.exc_info[1])  # type: ignore[index]
    router_warning = next(r for r in caplog.records if r.name == "llmlb.upstream")
    # What the node said (its message, quoting the id) is in the router's log, not the answer.
    assert f"(request {rid})" in router_warning.getMessage()
    assert f"Internal server error (request id: {rid})" in router_warning.getMessage()
    wait_until(lambda: len(access_lines(caplog, rid)) == 2, 5, "both access lines")
    node_line, router_line = sorted(access_lines(caplog, rid), key=lambda f: "model" in f)
    assert node_line["status"] == router_line["status"] == 500
    assert router_line["failed_nodes"] == "boom-node" and "node" not in router_line
    samples = metric_samples(echo_system.url)
    assert metric(samples, "llmlb_model_errors_total", model="boom-1", status="500") == 1


def test_metrics_label_routes_with_their_full_template(echo_system: ThreadServer) -> None:
    nodes_listed = metric(
        metric_samples(echo_system.url), "llmlb_requests_total", method="GET", route="/v0/nodes", status="200"
    )
    key = create_key(echo_system.url, ["api"], name="c")
    keys = httpx.get(f"{echo_system.url}/v0/keys", headers=AUTH).json()["data"]
    key_id = next(k["id"] for k in keys if k["name"] == "c")
    httpx.get(f"{echo_system.url}/v0/nodes", headers=AUTH)
    httpx.get(f"{echo_system.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    httpx.delete(f"{echo_system.url}/v0/keys/{key_id}", headers=AUTH)
    httpx.get(f"{echo_system.url}/no/such/thing", headers=AUTH)
    samples = metric_samples(echo_system.url)
    requests = {dict(labels)["route"] for name, labels in samples if name == "llmlb_requests_total"}
    assert {"/v0/nodes", "/v0/keys", "/v0/keys/{key_id}", "/v0/nodes/heartbeat", "/v1/models"} <= requests
    assert "unmatched" in requests and not any(r.startswith("/no/") for r in requests)
    assert (
        metric(samples, "llmlb_requests_total", method="GET", route="/v0/nodes", status="200")
        == nodes_listed + 1
    )


# --- real processes ------------------------------------------------------------------------------
def test_json_logs_are_one_object_per_line_and_uvicorn_speaks_as_the_server(
    tmp_path: Path, procs: list[Proc]
) -> None:
    router = router_proc(tmp_path, env={"LLMLB_LOG_FORMAT": "json"})
    procs.append(router)
    router.start().wait_healthy()
    response = httpx.get(f"{router.url}/v0/nodes", headers={**AUTH, "x-request-id": "json-1"}, timeout=10)
    assert response.status_code == 200

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in router.log().splitlines() if line.strip()]

    wait_until(lambda: any(r.get("request_id") == "json-1" for r in logged()), 10, "the access line")
    records = logged()
    [access] = [r for r in records if r.get("request_id") == "json-1"]
    assert access["logger"] == ACCESS and access["level"] == "INFO"
    assert (access["method"], access["route"], access["status"]) == ("GET", "/v0/nodes", 200)
    assert access["bytes_out"] == len(response.content) and access["duration_s"] > 0
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" not in loggers
    assert any(r["logger"] == "llmlb.server" and "Started server process" in r["message"] for r in records)


def test_a_generation_reports_its_images_time_and_steps(image_system: ImageSystem) -> None:
    rid = f"gen-{uuid.uuid4().hex[:8]}"
    before = metric_samples(image_system.router.url)
    result = image_system.client().images.generate(
        model="demo", prompt="a red square", size="auto", extra_headers={"x-request-id": rid}
    )
    assert len(result.data) == 1
    after = metric_samples(image_system.router.url)

    def grew(name: str) -> float:
        return metric(after, name, model="demo") - metric(before, name, model="demo")

    assert grew("llmlb_model_images_total") == 1
    assert grew("llmlb_model_generation_seconds_count") == 1
    generation_s = grew("llmlb_model_generation_seconds_sum")
    steps = grew("llmlb_model_steps_total")
    assert generation_s > 0 and steps >= 1
    assert metric(after, "llmlb_model_steps_per_second", model="demo") == pytest.approx(
        steps / generation_s, rel=0.01
    )

    def line_of(proc: Proc) -> str | None:
        return next((line for line in proc.log().splitlines() if f"id={rid}" in line), None)

    wait_until(lambda: line_of(image_system.router) and line_of(image_system.node), 10, "both access lines")
    router_line, node_line = line_of(image_system.router), line_of(image_system.node)
    assert router_line is not None and node_line is not None
    assert " llmlb.access: POST /v1/images/generations 200 " in router_line
    for part in ("model=demo", "node=sd-shared", "images=1", f"steps={int(steps)}"):
        assert part in router_line.split(), (part, router_line)
    assert " llmlb.access: POST /v1/images/generations 200 " in node_line
    assert "images=1" in node_line.split() and f"steps={int(steps)}" in node_line.split()
