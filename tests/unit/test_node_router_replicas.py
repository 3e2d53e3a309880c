"""A node given several routers (issue 19, router replicas): it registers with the first that
answers, heartbeats to that one, and when it stops answering (connection refused, a timeout, a
5xx) re-registers with the next at once, in one line; a refusal of its key (401, 403) is fatal
as with one router. The routers here are an httpx mock transport: which one answers what."""

from __future__ import annotations

import logging

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from llmlb_core.protocol import ModelAdvert
from llmlb_node.agent import RouterLink
from llmlb_node.app import create_node_app
from llmlb_node.runtime import Runtime
from llmlb_node.settings import NodeSettings
from tests.support.servers import wait_until

A, B, C = "http://router-a:8080", "http://router-b:8080", "http://router-c:8080"


class Idle(Runtime):
    type_name = "idle"

    def models(self) -> list[ModelAdvert]:
        return []

    def routes(self) -> list:  # type: ignore[type-arg]
        return []


class Routers:
    """What each router does: ``up`` (answers), ``down`` (connection refused), ``timeout``, or
    an HTTP status it answers every request with. Records (router, path) of every request."""

    def __init__(self, **states: str | int) -> None:
        self.states: dict[str, str | int] = {A: "up", B: "up", C: "up"}
        self.states.update({{"a": A, "b": B, "c": C}[k]: v for k, v in states.items()})
        self.calls: list[tuple[str, str]] = []

    def set(self, router: str, state: str | int) -> None:
        self.states[router] = state

    def handler(self, request: httpx.Request) -> httpx.Response:
        router = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.calls.append((router, request.url.path))
        state = self.states[router]
        if state == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if state == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(state, int):
            error = {"message": f"status {state}", "type": "x", "param": None, "code": None}
            return httpx.Response(state, json={"error": error})
        if request.url.path == "/v0/nodes/register":
            node_id = msgspec.json.decode(request.content)["node_id"]
            return httpx.Response(
                200, json={"node_id": node_id, "heartbeat_interval_s": 5.0, "node_timeout_s": 20.0}
            )
        if request.url.path == "/v0/nodes/heartbeat":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(200, json={"ok": True})

    def paths(self, router: str) -> list[str]:
        return [path for r, path in self.calls if r == router]


def link_for(routers: Routers, urls: list[str]) -> RouterLink:
    settings = NodeSettings(router_url=urls, api_key="k", node_id="n1", heartbeat_interval_s=0.1)
    return RouterLink(
        settings, [Idle()], "token", accelerators=list, transport=httpx.MockTransport(routers.handler)
    )


def agent_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmlb.node.agent"]


async def test_the_node_registers_with_the_first_router_that_answers() -> None:
    routers = Routers(a="down", b=503)
    link = link_for(routers, [A, B, C])
    await link.register()
    assert link.registered.is_set() and link.router_url == C
    await link.beat()
    assert routers.paths(C) == ["/v0/nodes/register", "/v0/nodes/heartbeat"]
    assert routers.paths(A) == routers.paths(B) == ["/v0/nodes/register"]
    await link.stop()
    assert routers.calls[-1] == (C, "/v0/nodes/n1/deregister")


@pytest.mark.parametrize(
    ("failure", "reason"),
    [("down", "ConnectError"), ("timeout", "ReadTimeout"), (503, "HTTP 503 status 503")],
)
async def test_a_router_that_stops_answering_is_left_for_the_next_at_the_next_heartbeat(
    caplog: pytest.LogCaptureFixture, failure: str | int, reason: str
) -> None:
    routers = Routers()
    link = link_for(routers, [A, B])
    await link.register()
    await link.beat()
    assert link.router_url == A
    routers.set(A, failure)
    caplog.clear()
    with caplog.at_level(logging.INFO, "llmlb.node.agent"):
        await link.beat()  # fails at A, then registers with B at once
    assert link.registered.is_set() and link.router_url == B
    assert routers.paths(B) == ["/v0/nodes/register"]
    assert agent_lines(caplog) == [
        f"router {A} unreachable ({reason}); registered with {B} as n1 (heartbeat every 0.1s)"
    ]
    await link.beat()
    assert routers.paths(B) == ["/v0/nodes/register", "/v0/nodes/heartbeat"]
    # Round-robin: when B goes too, the node goes back to A (up again).
    routers.set(A, "up")
    routers.set(B, "down")
    await link.beat()
    assert link.router_url == A and routers.paths(A)[-1] == "/v0/nodes/register"
    await link.stop()
    assert routers.calls[-1] == (A, "/v0/nodes/n1/deregister")


async def test_when_no_router_answers_the_node_keeps_trying_them_in_one_line_per_state(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    routers = Routers(a="down", b="down")
    link = link_for(routers, [A, B])
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            routers.set(B, "up")

    monkeypatch.setattr("llmlb_node.agent.asyncio.sleep", sleep)
    with caplog.at_level(logging.INFO, "llmlb.node.agent"):
        await link.register()
    assert link.router_url == B and len(sleeps) == 3
    assert agent_lines(caplog) == [
        f"no router answered ({A}: ConnectError; {B}: ConnectError); retrying (up to every 5s) "
        "until one does",
        f"registered with router {B} as n1 (heartbeat every 0.1s)",
    ]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_fatal_not_a_reason_to_try_another_router(status: int) -> None:
    routers = Routers(a=status)
    link = link_for(routers, [A, B])
    await link.register()
    assert link.fatal is not None and f"the router {A} refused" in link.fatal
    assert not link.registered.is_set() and routers.paths(B) == []
    # The same at a switch: B refuses the key that A took.
    routers = Routers(b=status)
    link = link_for(routers, [A, B])
    await link.register()
    routers.set(A, "down")
    await link.beat()
    assert link.fatal is not None and f"the router {B} refused" in link.fatal
    assert routers.paths(C) == []


async def test_one_router_keeps_its_heartbeats_without_re_registering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    routers = Routers()
    link = link_for(routers, [A])
    await link.register()
    routers.set(A, "down")
    caplog.clear()
    with caplog.at_level(logging.INFO, "llmlb.node.agent"):
        await link.beat()
        await link.beat()
    assert (
        link.registered.is_set() and routers.paths(A) == ["/v0/nodes/register"] + ["/v0/nodes/heartbeat"] * 2
    )
    assert agent_lines(caplog) == [f"heartbeat to router {A} failed (ConnectError); still trying every 0.1s"]


def test_the_node_health_names_its_current_router() -> None:
    routers = Routers(a="down")
    settings = NodeSettings(router_url=[A, B], api_key="k", node_id="n1", heartbeat_interval_s=0.1)
    app = create_node_app(settings, runtimes=[Idle()], router_transport=httpx.MockTransport(routers.handler))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/health").json()["registered"], 10, "registered")
        assert client.get("/health").json()["router"] == B
