"""Router replicas (issue 19), the node's side, with real processes: a node given two routers
registers with the first; when that one is killed, the node re-registers with the second within
one heartbeat interval (plus a small margin), in one log line, and requests through the second
router are served. The routers share their admin key (the node's key here), each its own
SQLite data dir."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai

from tests.support.servers import ADMIN_KEY, Proc, node_proc, node_status, router_proc, wait_until
from tests.support.text_fixtures import UPSTREAM_KEY, backend

HEARTBEAT_S = 0.5
MARGIN_S = 1.5


def complete(router: Proc, prompt: str) -> str:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=10)
    return client.completions.create(model="served-model", prompt=prompt).choices[0].text


def test_a_node_whose_router_dies_registers_with_the_next_within_a_heartbeat(
    tmp_path: Path, procs: list[Proc]
) -> None:
    a = router_proc(tmp_path, data_dir=tmp_path / "a-data", env={"LLMLB_NODE_TIMEOUT_S": "5"})
    b = router_proc(tmp_path, data_dir=tmp_path / "b-data", env={"LLMLB_NODE_TIMEOUT_S": "5"})
    procs.extend([a, b])
    a.start()
    b.start()
    a.wait_healthy()
    b.wait_healthy()
    with backend("replicas", ["served-model"]) as up:
        node = node_proc(
            tmp_path,
            a.url,
            tmp_path / "no-models",
            ADMIN_KEY,
            name="replica-node",
            extra=[
                "--router", b.url,
                "--heartbeat-interval", str(HEARTBEAT_S),
                "--runtime", "openai_compatible",
                "--upstream", f"{up.url}/v1",
                "--upstream-key", UPSTREAM_KEY,
                "--upstream-model", "served-model",
                "--upstream-capability", "text_generation",
            ],
        )  # fmt: skip
        procs.append(node)
        node.start().wait_healthy().wait_online(a.url)
        assert complete(a, "via a") == "replicas completes: via a"
        assert node_status(b.url, "replica-node") is None  # registered with A only
        assert httpx.get(f"{node.url}/health", timeout=5).json()["router"] == a.url

        a.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: node_status(b.url, "replica-node") == "online",
            HEARTBEAT_S + MARGIN_S,
            "the node online on B within a heartbeat",
        )
        took = time.monotonic() - killed_at
        assert complete(b, "via b") == "replicas completes: via b"
        health = httpx.get(f"{node.url}/health", timeout=5).json()
        assert (health["registered"], health["router"]) == (True, b.url)

    log = node.log()
    [switch] = [line for line in log.splitlines() if "unreachable" in line]
    assert f"router {a.url} unreachable (" in switch and f"registered with {b.url} as " in switch
    assert "Traceback" not in log
    print(f"re-registered with B {took:.2f}s after A was killed (heartbeat {HEARTBEAT_S}s)")
