"""The ``reverser`` runtime with the ``reverse`` capability it serves, in one process
(``llmlb_core.testing.Cluster``: a real router and a real node, no port, no child process).
Run with ``pytest examples/llmlb-echo-runtime``."""

from __future__ import annotations

from typing import Any

import pytest
from llmlb_echo_capability import plugin as capability
from llmlb_echo_runtime import plugin as runtime

from llmlb_core.testing import Cluster

SETTINGS = {"runtime": {"reverser": {"model": "reverser-small", "slots": 3}}}


@pytest.fixture
async def cluster() -> Any:
    async with Cluster(capabilities=[capability], runtimes=[runtime], node=SETTINGS) as cluster:
        yield cluster


async def test_the_runtime_reverses_the_text(cluster: Cluster) -> None:
    answer = await cluster.client.post("/v1/reverse", json={"model": "reverser-small", "text": "héllo"})
    assert answer.status_code == 200
    assert answer.json() == {"model": "reverser-small", "text": "olléh", "object": "reverse"}


async def test_the_node_advertises_its_model_slots_and_load(cluster: Cluster) -> None:
    await cluster.heartbeat()  # the load comes with heartbeats
    [node] = (await cluster.admin.get("/v0/nodes")).json()["data"]
    assert (node["runtime_types"], node["slots"], node["loaded_models"]) == (
        ["reverser"],
        3,
        ["reverser-small"],
    )
    assert [m["id"] for m in (await cluster.client.get("/v1/models")).json()["data"]] == ["reverser-small"]


async def test_the_node_refuses_a_model_it_does_not_serve(cluster: Cluster) -> None:
    # Straight to the node, as the router would call it: the node core refuses it.
    answer = await cluster.node_client.post("/v1/reverse", json={"model": "other", "text": "hi"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "model_not_found")


async def test_settings_come_from_the_environment() -> None:
    environ = {"LLMLB_NODE_RUNTIME__REVERSER__MODEL": "from-env"}
    async with Cluster(capabilities=[capability], runtimes=[runtime], environ=environ) as cluster:
        answer = await cluster.client.post("/v1/reverse", json={"model": "from-env", "text": "ab"})
        assert answer.json()["text"] == "ba"
