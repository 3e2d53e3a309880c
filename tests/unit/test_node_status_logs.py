"""The router's node status lines say what happened, once: a draining node's heartbeats do not
announce it "back online", a node taken down by a refused connection is "down: <reason>" and not
also "offline: no heartbeat", and a missed heartbeat says how long it has been missing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llmlb_core.protocol import Heartbeat, NodeRegistration
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.storage.sqlite import Store

TIMEOUT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def nodes(tmp_path: Path, clock: Clock) -> NodeRegistry:
    registry = NodeRegistry(Store(tmp_path / "db.sqlite3"), timeout_s=TIMEOUT_S, clock=clock)
    registry.register(
        NodeRegistration(
            node_id="n-1", name="gpu-1", base_url="http://127.0.0.1:9", token="t", runtime_types=[], models=[]
        )
    )
    registry.sweep()
    return registry


def beat(nodes: NodeRegistry) -> None:
    assert nodes.heartbeat(Heartbeat(node_id="n-1", active_jobs=0, free_slots=1))


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmlb.nodes"]


def test_a_draining_node_stays_draining_through_its_heartbeats(
    nodes: NodeRegistry, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmlb.nodes")
    assert nodes.set_draining("n-1")
    for _ in range(5):
        clock.now += 2
        beat(nodes)
        nodes.sweep()
    node = nodes.get("n-1")
    assert node is not None and nodes.status(node) == "draining"
    assert lines(caplog) == ["node gpu-1 (n-1) is draining"]


def test_a_refused_connection_is_down_with_its_reason_not_a_missed_heartbeat(
    nodes: NodeRegistry, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmlb.nodes")
    node = nodes.get("n-1")
    assert node is not None
    nodes.mark_down(node, "ConnectError: [Errno 111] Connection refused")
    for _ in range(4):  # sweeps after the refusal, and past the heartbeat timeout
        clock.now += TIMEOUT_S / 2
        nodes.sweep()
    assert nodes.status(node) == "offline"
    assert lines(caplog) == [
        "node gpu-1 (n-1) is down: ConnectError: [Errno 111] Connection refused "
        "(failover: no traffic to it until its next heartbeat)"
    ]
    caplog.clear()
    beat(nodes)  # it was only restarting
    nodes.sweep()
    assert nodes.status(node) == "online"
    assert lines(caplog) == ["node gpu-1 (n-1) is back online"]


def test_a_missed_heartbeat_says_how_long_it_has_been_missing(
    nodes: NodeRegistry, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmlb.nodes")
    clock.now += TIMEOUT_S + 2.5
    nodes.sweep()
    nodes.sweep()
    assert lines(caplog) == ["node gpu-1 (n-1) is offline: no heartbeat for 12.5s"]
    caplog.clear()
    beat(nodes)
    assert lines(caplog) == ["node gpu-1 (n-1) is back online"]
    nodes.sweep()
    assert lines(caplog) == ["node gpu-1 (n-1) is back online"]
