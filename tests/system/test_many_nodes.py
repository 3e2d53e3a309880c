"""Many nodes: a real router and 3 real StableDiffusion node processes on loopback.

Balancing over all nodes, fan-out of ``n`` with seed-exact results, failover when a node is
killed mid-generation (SIGKILL), rejoining after restart, a full queue (429 + Retry-After),
and a SIGTERM drain that loses no request.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.images_util import decode_b64
from tests.support.servers import (
    Proc,
    admin_get,
    create_key,
    free_port,
    node_proc,
    router_proc,
    wait_until,
)

NODES = ("n1", "n2", "n3")
QUEUE_MAX = 12


class Cluster:
    def __init__(self, tmp: Path, models_dir: Path) -> None:
        self.tmp = tmp
        self.models_dir = models_dir
        self.router = router_proc(
            tmp,
            env={
                "LLMLB_NODE_TIMEOUT_S": "2",
                "LLMLB_QUEUE_MAX": str(QUEUE_MAX),
                "LLMLB_QUEUE_TIMEOUT_S": "120",
            },
        )
        self.nodes: dict[str, Proc] = {}
        self.ports = {name: free_port() for name in NODES}
        self.node_key = ""
        self.api_key = ""

    def start(self) -> None:
        self.router.start().wait_healthy()
        self.node_key = create_key(self.router.url, ["node"])
        self.api_key = create_key(self.router.url, ["api"])
        for name in NODES:
            self.start_node(name, wait=False)
        for name in NODES:
            self.wait_online(name)

    def start_node(self, name: str, wait: bool = True) -> Proc:
        proc = node_proc(
            self.tmp,
            self.router.url,
            self.models_dir,
            self.node_key,
            port=self.ports[name],
            name=name,
            # Stable ids, so that x-llmlb-node names the node (the default id is random).
            extra=["--threads", "1", "--node-id", name],
        )
        self.nodes[name] = proc.start()
        if wait:
            self.wait_online(name)
        return proc

    def wait_online(self, name: str) -> None:
        self.nodes[name].wait_healthy(60).wait_online(self.router.url)

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.stop()
        self.router.stop()

    def generate(self, **body: Any) -> httpx.Response:
        payload = {"model": "demo", "prompt": "a castle", "steps": 1, "response_format": "b64_json", **body}
        return httpx.post(
            f"{self.router.url}/v1/images/generations",
            json=payload,
            timeout=300,
            headers={"authorization": f"Bearer {self.api_key}"},
        )

    def concurrently(self, count: int, **body: Any) -> list[httpx.Response]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.generate(**body), range(count)))

    def node_view(self, name: str) -> dict[str, Any]:
        return next(n for n in admin_get(self.router.url, "/v0/nodes")["data"] if n["name"] == name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Cluster]:
    system = Cluster(tmp_path_factory.mktemp("cluster"), models_dir)
    try:
        system.start()
        yield system
    finally:
        system.stop()


def served_by(response: httpx.Response) -> list[str]:
    return response.headers["x-llmlb-node"].split(",")


def test_15_concurrent_generations_all_succeed_on_all_3_nodes(cluster: Cluster) -> None:
    responses = cluster.concurrently(15)
    assert [r.status_code for r in responses] == [200] * 15, [
        r.text for r in responses if r.status_code != 200
    ]
    counts = Counter(node for r in responses for node in served_by(r))
    assert set(counts) == set(NODES), counts
    assert all(count >= 3 for count in counts.values()), counts  # spread, not piled on one node
    assert any(r.headers.get("x-queue-status") == "queued" for r in responses)
    for name in NODES:
        view = cluster.node_view(name)
        assert view["completed"] >= 3 and view["avg_duration_s"] > 0 and view["loaded_models"] == ["demo"]


def test_fan_out_n6_over_3_nodes_matches_single_seed_results(cluster: Cluster) -> None:
    fanned = cluster.generate(n=6, seed=4242)
    assert fanned.status_code == 200, fanned.text
    assert sorted(served_by(fanned)) == sorted(NODES)
    images = [decode_b64(d["b64_json"]).tobytes() for d in fanned.json()["data"]]
    assert len(images) == 6 and len(set(images)) == 6
    assert [d["seed"] for d in fanned.json()["data"]] == list(range(4242, 4248))
    # Image i is exactly what one node makes for seed + i: fan-out changes nothing.
    for i in (0, 3, 5):
        single = cluster.generate(n=1, seed=4242 + i)
        assert decode_b64(single.json()["data"][0]["b64_json"]).tobytes() == images[i]


def test_full_queue_answers_429_with_retry_after(cluster: Cluster) -> None:
    responses = cluster.concurrently(QUEUE_MAX + len(NODES) + 5, steps=2)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] >= 1 and statuses[200] >= QUEUE_MAX, statuses
    for rejected in (r for r in responses if r.status_code == 429):
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["code"] == "queue_full"


def test_sigkill_mid_generation_fails_over_and_node_rejoins(cluster: Cluster) -> None:
    victim = cluster.nodes["n2"]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(cluster.generate, steps=4, n=2) for _ in range(6)]
        wait_until(lambda: cluster.node_view("n2")["inflight"] > 0, 60, "n2 busy", interval=0.02)
        time.sleep(0.3)  # let it get into the sampling steps
        victim.signal(signal.SIGKILL)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert all(len(r.json()["data"]) == 2 for r in responses)
    view = cluster.node_view("n2")
    assert view["status"] == "offline"
    assert any("unreachable" in f["reason"] for f in view["recent_failures"]), view
    after = cluster.concurrently(6)
    assert all(r.status_code == 200 for r in after)
    assert "n2" not in {node for r in after for node in served_by(r)}
    # Restarted on the same port, it rejoins and gets work again.
    cluster.start_node("n2")
    landed = [served_by(r) for r in cluster.concurrently(6)]
    assert "n2" in {node for nodes in landed for node in nodes}, landed


def test_sigterm_drains_a_node_without_losing_a_request(cluster: Cluster) -> None:
    draining = cluster.nodes["n3"]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(cluster.generate, steps=4) for _ in range(6)]
        wait_until(lambda: cluster.node_view("n3")["inflight"] > 0, 60, "n3 busy", interval=0.02)
        draining.signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert draining.popen is not None
    draining.popen.wait(60)
    assert "drained: no job left" in draining.log()
    assert "n3" not in [n["name"] for n in admin_get(cluster.router.url, "/v0/nodes")["data"]]
    later = cluster.concurrently(3)
    assert all(r.status_code == 200 and "n3" not in served_by(r) for r in later)
    cluster.start_node("n3")
