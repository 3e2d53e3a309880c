"""Registered OpenAI-compatible endpoints (``/v0/endpoints``) on a router *process*: health
checks, the upstream key kept secret (APIs and the router's log), persistence across a router
restart, going offline and coming back, admin validation.

The upstream is the loopback test server of ``tests/text_backends.py``: these tests stop and
restart it on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.inproc import start_router
from tests.support.servers import Proc, ThreadServer, create_key, router_proc
from tests.support.text_fixtures import (
    ADMIN,
    UPSTREAM_KEY,
    backend,
    endpoint_view,
    register_endpoint,
    wait_endpoint,
)

ROUTER_ENV = {
    "LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.3",
    "LLMLB_NODE_TIMEOUT_S": "2",
    "LLMLB_LOG_LEVEL": "DEBUG",  # the key must not show up even in debug logs
}


def _chat(router_url: str, api_key: str, model: str = "tiny-chat") -> str:
    client = openai.OpenAI(base_url=f"{router_url}/v1", api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping"}])
    return completion.choices[0].message.content or ""


def test_endpoint_lifecycle_keeps_its_key_secret_and_survives_a_router_restart(
    tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "router-data"
    router = router_proc(tmp_path, data_dir=data_dir, env=ROUTER_ENV)
    procs.append(router)
    router.start().wait_healthy()
    api_key = create_key(router.url, ["api"])
    with backend("llama", ["tiny-chat"]) as up:
        created = register_endpoint(
            router.url, "llama", up.url + "/v1/", api_key=UPSTREAM_KEY, kind="llama_cpp"
        )
        assert created["status"] == "online"
        assert created["url"] == up.url  # normalized: no trailing /v1
        assert created["has_api_key"] is True
        assert created["served_models"][0]["capabilities"] == ["chat_completion", "text_completion"]
        assert _chat(router.url, api_key) == "llama heard: ping"
        assert up.state.requests[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"

        nodes = httpx.get(f"{router.url}/v0/nodes", headers=ADMIN).json()["data"]
        node = next(n for n in nodes if n["id"] == "endpoint:llama")
        assert node["runtime_types"] == ["llama_cpp"] and node["status"] == "online"
        responses = [
            httpx.get(f"{router.url}{path}", headers=ADMIN).text
            for path in ("/v0/endpoints", "/v0/endpoints/llama", "/v0/nodes", "/v1/models", "/v0/models")
        ]
        assert all(UPSTREAM_KEY not in text for text in responses)

        # Restart the router on the same data dir: the endpoint (and its key) come back.
        router.stop()
        restarted = router_proc(
            tmp_path, port=int(router.url.rsplit(":", 1)[1]), data_dir=data_dir, env=ROUTER_ENV
        )
        procs.append(restarted)
        restarted.start().wait_healthy()
        wait_endpoint(restarted.url, "llama")
        assert _chat(restarted.url, api_key) == "llama heard: ping"

        # The upstream goes away: checks fail, the endpoint goes offline, requests get 503.
        port = up.server.port
        up.server.stop()
        wait_endpoint(restarted.url, "llama", "offline")
        assert endpoint_view(restarted.url, "llama")["last_error"]
        with pytest.raises(openai.InternalServerError) as offline:
            _chat(restarted.url, api_key)
        assert offline.value.status_code == 503 and offline.value.code == "no_capable_nodes"
    # ... and comes back on the same port: online again.
    with backend("llama-again", ["tiny-chat"], port=port):
        wait_endpoint(restarted.url, "llama")
        assert _chat(restarted.url, api_key) == "llama-again heard: ping"
        deleted = httpx.delete(f"{restarted.url}/v0/endpoints/llama", headers=ADMIN)
        assert deleted.status_code == 200
        with pytest.raises(openai.NotFoundError):
            _chat(restarted.url, api_key)
    logs = router.log() + restarted.log()
    assert "endpoint llama added" in logs
    assert UPSTREAM_KEY not in logs
    assert UPSTREAM_KEY in (data_dir / "llmlb.sqlite3").read_bytes().decode("latin-1")  # kept for restarts


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    server = start_router(tmp_path_factory.mktemp("endpoints") / "data", endpoint_check_interval_s=0.3)
    try:
        yield server
    finally:
        server.stop()


def test_wrong_upstream_key_keeps_the_endpoint_offline(router: ThreadServer) -> None:
    with backend("locked", ["tiny-chat"]) as up:
        created = register_endpoint(router.url, "locked", up.url, api_key="sk-wrong")
        assert created["status"] == "offline"
        assert "401" in created["last_error"]


def test_endpoint_without_a_model_list_serves_declared_models(router: ThreadServer) -> None:
    with backend("whisper", ["ignored"], api_key=None) as up:
        up.state.no_models_route = True  # like whisper.cpp's server
        refused = httpx.post(
            f"{router.url}/v0/endpoints",
            json={"name": "w0", "url": up.url, "kind": "whisper_cpp"},
            headers=ADMIN,
        ).json()
        assert "declare its models" in refused["last_error"]
        created = register_endpoint(router.url, "w1", up.url, kind="whisper_cpp", models=["whisper-large-v3"])
        assert created["status"] == "online"
        assert created["served_models"][0]["id"] == "whisper-large-v3"
        assert created["served_models"][0]["capabilities"] == ["speech_to_text"]


def test_declared_capabilities_and_aliases(router: ThreadServer) -> None:
    with backend("mixed", ["m-chat", "m-embed", "m-other"], api_key=None) as up:
        created = register_endpoint(
            router.url,
            "mixed",
            up.url,
            capabilities=["text_generation"],
            model_capabilities={"m-embed": ["embedding"]},
            models=["m-chat", "m-embed"],
        )
        served = {m["id"]: m["capabilities"] for m in created["served_models"]}
        assert served == {"m-chat": ["chat_completion", "text_completion"], "m-embed": ["embeddings"]}
        assert created["capabilities"] == ["chat_completion", "text_completion"]


def test_endpoint_registration_validation(router: ThreadServer) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": "x", "url": "ftp://host"}, "url"),
        ({"name": "x", "url": "http://user:secret@host:1"}, "url"),
        ({"name": "bad name", "url": "http://h:1"}, "name"),
        ({"name": "x", "url": "http://h:1", "kind": "tgi"}, "kind"),
        ({"name": "x", "url": "http://h:1", "capabilities": ["image_generation2"]}, "capabilities"),
        ({"name": "x", "url": "http://h:1", "capabilities": []}, "capabilities"),
        ({"name": "x", "url": "http://h:1", "slots": 0}, "slots"),
        ({"name": "x", "url": "http://h:1", "surprise": 1}, "surprise"),
    ]
    for body, param in cases:
        response = httpx.post(f"{router.url}/v0/endpoints", json=body, headers=ADMIN)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body


def test_endpoints_need_the_admin_scope_and_names_are_unique(router: ThreadServer) -> None:
    api_key = create_key(router.url, ["api"])
    body = {"name": "dup", "url": "http://127.0.0.1:9"}
    denied = httpx.post(f"{router.url}/v0/endpoints", json=body, headers={"x-api-key": api_key})
    assert denied.status_code == 403
    first = httpx.post(f"{router.url}/v0/endpoints", json=body, headers=ADMIN)
    assert first.status_code == 201
    assert first.json()["status"] == "offline" and "unreachable" in first.json()["last_error"]
    again = httpx.post(f"{router.url}/v0/endpoints", json=body, headers=ADMIN)
    assert again.status_code == 409
    listed = httpx.get(f"{router.url}/v0/endpoints", headers=ADMIN).json()["data"]
    assert "dup" in [e["name"] for e in listed]
    assert httpx.delete(f"{router.url}/v0/endpoints/dup", headers=ADMIN).status_code == 200
    assert httpx.delete(f"{router.url}/v0/endpoints/dup", headers=ADMIN).status_code == 404
    assert httpx.get(f"{router.url}/v0/endpoints/dup", headers=ADMIN).status_code == 404
