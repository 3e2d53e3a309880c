"""Node health and persistence with real router and node processes: missed heartbeats take a
node offline (no traffic), resumed heartbeats bring it back; a router restart keeps keys and
models, and nodes re-register by themselves."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar, Request, Response, post

from tests.support.servers import (
    ADMIN_KEY,
    Proc,
    ThreadServer,
    admin_get,
    create_key,
    free_port,
    node_proc,
    node_status,
    router_proc,
    wait_until,
)


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
        response = httpx.post(
            f"{router.url}/v1/images/generations",
            headers=headers,
            timeout=10,
            json={"model": "demo", "prompt": "x", "size": "256x256"},
        )
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
    registered = httpx.post(
        f"{router.url}/v0/models",
        headers={"x-api-key": ADMIN_KEY},
        json={
            "id": "demo",
            "capabilities": ["image_generation"],
            "defaults": {"steps": 1},
            "description": "synthetic",
        },
    )
    assert registered.status_code == 201
    assert router.stop() is not None
    restarted = router_proc(
        tmp_path, port=port, data_dir=tmp_path / "router-data", env={"LLMLB_NODE_TIMEOUT_S": "2"}
    )
    procs.append(restarted)
    restarted.start().wait_healthy()
    headers = {"authorization": f"Bearer {api_key}"}
    # The key created before the restart still works; the node comes back by itself.
    wait_until(lambda: node_status(restarted.url, "sd-node-1") == "online", 15, "node re-registered")
    models = httpx.get(f"{restarted.url}/v1/models", headers=headers).json()["data"]
    assert [(m["id"], m["defaults"], m["description"]) for m in models] == [
        ("demo", {"steps": 1}, "synthetic")
    ]
    assert "re-registering" in sd_node.log()
    # The admin key from the first start is not duplicated, and new keys can still be made.
    assert create_key(restarted.url, ["api"], name="after-restart")


def test_a_model_that_cannot_load_is_an_openai_503_and_node_keeps_serving(
    tmp_path: Path, router: Proc, node_key: str, api_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from tests.support.models import copy_model

    own_models = tmp_path / "models"
    copy_model(models_dir, own_models, "demo")
    (own_models / "broken").mkdir()
    # Tensor names of an SD1 checkpoint (so the node serves the folder) with shapes that are
    # not: stable-diffusion.cpp refuses to load it.
    f16 = np.float16
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), dtype=f16),
            "model.diffusion_model.output_blocks.7.1.proj_in.weight": np.zeros((4, 4), dtype=f16),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": np.zeros(
                (8, 768), dtype=f16
            ),
            "first_stage_model.decoder.conv_in.weight": np.zeros((4, 4, 3, 3), dtype=f16),
        },
        str(own_models / "broken" / "model.safetensors"),
    )
    node = node_proc(tmp_path, router.url, own_models, node_key, name="mixed")
    procs.append(node)
    node.start().wait_healthy(60).wait_online(router.url)
    headers = {"authorization": f"Bearer {api_key}"}
    failed = httpx.post(
        f"{router.url}/v1/images/generations",
        headers=headers,
        timeout=120,
        json={"model": "broken", "prompt": "x", "response_format": "b64_json"},
    )
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    # The node's code is kept; its message is logged, not shown (issue 8): a request id is.
    assert error["code"] == "model_load_failed" and "request id: req_" in error["message"]
    assert error["type"] == "server_error"
    ok = httpx.post(
        f"{router.url}/v1/images/generations",
        headers=headers,
        timeout=120,
        json={"model": "demo", "prompt": "x", "steps": 1, "response_format": "b64_json"},
    )
    assert ok.status_code == 200, ok.text
    assert node.popen is not None and node.popen.poll() is None


def test_a_node_whose_key_the_router_refuses_stops_saying_how_to_make_one(
    tmp_path: Path, router: Proc, api_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    """401 (unknown key) and 403 (a key without the node scope): one line, exit 2, no retries."""
    for key, reason in (
        ("sk-llmlb-no-such-key", "Incorrect API key provided (HTTP 401)"),
        (api_key, "This API key lacks the 'node' scope required here (HTTP 403)"),
    ):
        node = node_proc(tmp_path, router.url, models_dir, key)
        procs.append(node)
        assert node.start().popen is not None
        assert node.popen.wait(60) == 2, node.log()
        last = node.log().strip().splitlines()[-1]
        assert last.startswith(f"llmlb: the router {router.url} refused this node's key: {reason}"), last
        assert "llmlb keys create NAME --scope node" in last and "--api-key" in last
        assert "Traceback" not in node.log() and "retrying" not in node.log()


def test_a_missing_models_dir_stops_the_node_suggesting_the_demo_model(
    tmp_path: Path, router: Proc, node_key: str, procs: list[Proc]
) -> None:
    missing = tmp_path / "no-models-here"
    node = node_proc(tmp_path, router.url, missing, node_key)
    procs.append(node)
    assert node.start().popen is not None
    assert node.popen.wait(60) == 2, node.log()
    assert node.log().strip().splitlines() == [
        f"llmlb: this node has nothing to serve: the models dir {missing} does not exist (--models-dir: "
        f"one folder per model; `llmlb demo-model {missing / 'demo'}` writes a small one), no server "
        "to front (--upstream URL), and no runtime asked for (--runtime NAME; installed: "
        "openai_compatible, stable_diffusion)"
    ]
    assert admin_get(router.url, "/v0/nodes")["data"] == []


def test_registration_problems_are_one_line_per_state_not_per_retry(
    tmp_path: Path, models_dir: Path, procs: list[Proc]
) -> None:
    """A node whose router is not up yet, then answers 503 four times, then takes it: one line
    for each state, then "registered"."""
    registrations: list[float] = []

    @post("/v0/nodes/register", status_code=200)
    async def register(request: Request[Any, Any, Any]) -> Response[Any]:
        registrations.append(time.monotonic())
        if len(registrations) <= 4:
            error = {"message": "starting up", "type": "server_error", "param": None, "code": None}
            return Response({"error": error}, status_code=503)
        node_id = (await request.json())["node_id"]
        return Response({"node_id": node_id, "heartbeat_interval_s": 10.0, "node_timeout_s": 40.0})

    @post("/v0/nodes/heartbeat", status_code=200)
    async def heartbeat() -> dict[str, bool]:
        return {"ok": True}

    @post("/v0/nodes/{node_id:str}/deregister", status_code=200)
    async def deregister() -> dict[str, bool]:
        return {"deregistered": True}

    port = free_port()
    node = node_proc(tmp_path, f"http://127.0.0.1:{port}", models_dir, "sk-llmlb-any")
    procs.append(node)
    node.start().wait_healthy(60)
    wait_until(lambda: "not reachable" in node.log(), 30, "the unreachable router's line")
    fake = ThreadServer(Litestar([register, heartbeat, deregister]), port=port).start()
    try:
        wait_until(lambda: "registered with router" in node.log(), 60, "the registration")
    finally:
        fake.stop()
    log = node.log()
    assert len(registrations) == 5
    assert log.count("not reachable (ConnectError)") == 1
    assert log.count("router refused registration: HTTP 503 starting up") == 1
    assert log.index("not reachable") < log.index("HTTP 503") < log.index("registered with router")
