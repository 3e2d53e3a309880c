"""Node health and persistence with real router and node processes: missed heartbeats take a
node offline (no traffic), resumed heartbeats bring it back; a router restart keeps keys and
models, and nodes re-register by themselves."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.servers import ADMIN_KEY, Proc, create_key, node_status, router_proc, wait_until


def test_missed_heartbeats_take_node_offline_and_resumed_ones_bring_it_back(
    router: Proc, sd_node: Proc, api_key: str
) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    assert [m["id"] for m in httpx.get(f"{router.url}/v1/models", headers=headers).json()["data"]] == ["demo"]
    sd_node.signal(signal.SIGSTOP)  # the process is alive but silent: no heartbeats
    try:
        stopped_at = time.monotonic()
        wait_until(lambda: node_status(router.url, "sd-node-1") == "offline", 10, "node offline")
        assert time.monotonic() - stopped_at >= 1.5  # not before the 2 s timeout (minus a beat)
        assert httpx.get(f"{router.url}/v1/models", headers=headers).json()["data"] == []
        response = httpx.post(f"{router.url}/v1/images/generations", headers=headers, timeout=10,
                              json={"model": "demo", "prompt": "x", "size": "256x256"})
        assert response.status_code == 503  # no traffic goes to the offline node
        assert response.json()["error"]["code"] == "no_capable_nodes"
    finally:
        sd_node.signal(signal.SIGCONT)
    wait_until(lambda: node_status(router.url, "sd-node-1") == "online", 10, "node back online")
    assert [m["id"] for m in httpx.get(f"{router.url}/v1/models", headers=headers).json()["data"]] == ["demo"]


def test_router_restart_keeps_keys_and_nodes_reregister(
    tmp_path: Path, router: Proc, sd_node: Proc, api_key: str, procs: list[Proc]
) -> None:
    port = int(router.url.rsplit(":", 1)[1])
    registered = httpx.post(f"{router.url}/v0/models", headers={"x-api-key": ADMIN_KEY},
                            json={"id": "demo", "capabilities": ["image_generation"],
                                  "defaults": {"steps": 1}, "description": "synthetic"})
    assert registered.status_code == 201
    assert router.stop() is not None
    restarted = router_proc(tmp_path, port=port, data_dir=tmp_path / "router-data",
                            env={"LLMLB_NODE_TIMEOUT_S": "2"})
    procs.append(restarted)
    restarted.start().wait_healthy()
    headers = {"authorization": f"Bearer {api_key}"}
    # The key created before the restart still works; the node comes back by itself.
    wait_until(lambda: node_status(restarted.url, "sd-node-1") == "online", 15, "node re-registered")
    models = httpx.get(f"{restarted.url}/v1/models", headers=headers).json()["data"]
    assert [(m["id"], m["defaults"], m["description"]) for m in models] == [("demo", {"steps": 1}, "synthetic")]
    assert "re-registering" in sd_node.log()
    # The admin key from the first start is not duplicated, and new keys can still be made.
    assert create_key(restarted.url, ["api"], name="after-restart")
