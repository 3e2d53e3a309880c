"""What a node names is checked before it reaches a log line, a header or a page, and what it
advertises is bounded (issue 17, items 2 and 6).

A real router process; the rogue node is a node key sending registrations and heartbeats over
HTTP, as an attacker with a leaked node key would (no node process is needed to send them), and
an admin-registered endpoint whose model list is hostile is a loopback HTTP server
(``tests.support.fake_node.FakeNode``, a FAKE: it only answers ``GET /v1/models``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_node import Answer, FakeNode
from tests.support.hostile_util import expect_error
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, router_proc, wait_until

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MAX_MODELS = 50  # the router's max_models_per_node in this module (default 1000)
FORGED = "evil\nFORGED-LINE <img src=x>"


def model(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "capabilities": ["chat_completion"], "runtime": "openai_compatible", **extra}


class Rogue:
    """A node key, used as an attacker would: raw registrations and heartbeats."""

    def __init__(self, router: Proc, key: str) -> None:
        self.router = router
        self.headers = {"authorization": f"Bearer {key}"}

    def register(self, node_id: str, models: list[dict[str, Any]], **extra: Any) -> httpx.Response:
        body = {
            "node_id": node_id,
            "name": node_id,
            "base_url": "http://127.0.0.1:9",
            "token": "rogue-token",
            "runtime_types": ["openai_compatible"],
            "models": models,
            **extra,
        }
        return self.post("/v0/nodes/register", json.dumps(body).encode())

    def heartbeat(self, node_id: str, **fields: Any) -> httpx.Response:
        return self.post("/v0/nodes/heartbeat", json.dumps({"node_id": node_id, **fields}).encode())

    def post(self, path: str, body: bytes) -> httpx.Response:
        return httpx.post(
            f"{self.router.url}{path}",
            content=body,
            headers={**self.headers, "content-type": "application/json"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("hostile-adverts")
    proc = router_proc(tmp, env={"LLMLB_MAX_MODELS_PER_NODE": str(MAX_MODELS), "LLMLB_NODE_TIMEOUT_S": "30"})
    try:
        proc.start().wait_healthy()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def rogue(router: Proc) -> Rogue:
    return Rogue(router, create_key(router.url, ["node"], name="rogue"))


def log_lines(router: Proc, since: int) -> list[str]:
    return router.log()[since:].splitlines()


def assert_no_forged_line(router: Proc, since: int) -> None:
    for line in log_lines(router, since):
        assert not line.startswith("FORGED"), line
        assert line.isprintable(), repr(line)


def nodes(router: Proc) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in admin_get(router.url, "/v0/nodes")["data"]}


def test_a_model_id_that_would_forge_a_log_line_is_refused(router: Proc, rogue: Rogue) -> None:
    since = len(router.log())
    error = expect_error(rogue.register("forger", [model(FORGED)]), 400, "invalid_value", "models")
    assert "models[0].id" in error["message"], error
    assert "forger" not in nodes(router)
    assert_no_forged_line(router, since)


@pytest.mark.parametrize(
    "bad",
    ["a b", "tab\tid", "quote'id", 'dq"id', "<script>", "line\u2028sep", "bidi\u202eid", "", "x" * 257],
    ids=[
        "space",
        "tab",
        "quote",
        "double quote",
        "markup",
        "line separator",
        "bidi override",
        "empty",
        "257",
    ],
)
def test_model_ids_are_a_strict_charset(rogue: Rogue, bad: str) -> None:
    expect_error(rogue.register("strict", [model(bad)]), 400, "invalid_value", "models")


def test_ids_that_real_servers_use_are_accepted(router: Proc, rogue: Rogue) -> None:
    ids = [
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama3:8b",
        "ft:gpt-4o:org::abc",
        "/models/tiny.gguf",
        "a@b+c=d~e",
    ]
    response = rogue.register("real-ids", [model(i) for i in ids])
    assert response.status_code == 200, response.text
    assert sorted(m["id"] for m in nodes(router)["real-ids"]["models"]) == sorted(ids)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runtime_types", ["rt\nFORGED"]),
        ("token", "tok\r\nx-injected: 1"),
        ("version", "1.0\nFORGED"),
        ("accelerators", [{"kind": "cuda\nFORGED"}]),
        ("accelerators", [{"kind": "cuda", "name": "GPU\x1b[2J"}]),
    ],
    ids=["runtime type", "token", "version", "accelerator kind", "accelerator name"],
)
def test_every_name_in_a_registration_is_checked(router: Proc, rogue: Rogue, field: str, value: Any) -> None:
    since = len(router.log())
    response = rogue.register("names", [model("ok-model")], **{field: value})
    expect_error(response, 400, "invalid_value", field)
    assert_no_forged_line(router, since)


def test_a_description_and_flags_are_checked(rogue: Rogue) -> None:
    expect_error(rogue.register("d", [model("m", description="one\nFORGED")]), 400, "invalid_value", "models")
    expect_error(rogue.register("d", [model("m", description="x" * 1001)]), 400, "invalid_value", "models")
    bad_flag = {**model("m"), "capabilities": ["chat\nFORGED"]}
    expect_error(rogue.register("d", [bad_flag]), 400, "invalid_value", "models")


def test_twenty_thousand_models_are_refused_naming_the_bound(router: Proc, rogue: Rogue) -> None:
    before = httpx.get(f"{router.url}/v1/models", headers=ADMIN, timeout=10).content
    models = [model(f"m{i}") for i in range(20_000)]
    error = expect_error(rogue.register("hoarder", models), 400, "too_many_models", "models")
    assert f"at most {MAX_MODELS}" in error["message"] and "max_models_per_node" in error["message"]
    accepted = rogue.register("hoarder", models[:MAX_MODELS])
    assert accepted.status_code == 200, accepted.text
    listed = httpx.get(f"{router.url}/v1/models", headers=ADMIN, timeout=10).json()["data"]
    assert len([m for m in listed if m["id"].startswith("m")]) >= MAX_MODELS
    assert (
        len(httpx.get(f"{router.url}/v1/models", headers=ADMIN, timeout=10).content) < len(before) + 100_000
    )


def test_a_2_mb_description_and_big_details_are_refused(rogue: Rogue) -> None:
    huge = rogue.register("big", [model("m", description="x" * 2_000_000)])
    error = expect_error(huge, 400, "invalid_value", "models")
    assert "1000" in error["message"], error
    details = rogue.register("big", [model("m", details={"blob": "x" * 100_000})])
    error = expect_error(details, 413, "advert_too_large", "models[0]")
    assert "max_model_advert_bytes" in error["message"], error


def test_a_message_over_max_advert_bytes_is_refused_unread(rogue: Rogue) -> None:
    body = b'{"node_id": "big", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    error = expect_error(rogue.post("/v0/nodes/register", body), 413, "advert_too_large")
    assert "max_advert_bytes" in error["message"], error
    expect_error(rogue.post("/v0/nodes/heartbeat", body), 413, "advert_too_large")


def test_heartbeats_are_held_to_the_same_bounds(router: Proc, rogue: Rogue) -> None:
    assert rogue.register("beater", [model("beat-model")]).status_code == 200
    expect_error(rogue.heartbeat("beater", models=[model(FORGED)]), 400, "invalid_value", "models")
    too_many = [model(f"b{i}") for i in range(MAX_MODELS + 1)]
    expect_error(rogue.heartbeat("beater", models=too_many), 400, "too_many_models", "models")
    expect_error(rogue.heartbeat("beater", loaded_models=[FORGED]), 400, "invalid_value", "loaded_models")
    bad_job = {"model": FORGED, "step": 1, "steps": 2}
    expect_error(rogue.heartbeat("beater", jobs=[bad_job]), 400, "invalid_value", "jobs")
    ok = rogue.heartbeat("beater", loaded_models=["beat-model"], models=[model("beat-model")])
    assert ok.status_code == 200 and ok.json()["ok"], ok.text
    assert [m["id"] for m in nodes(router)["beater"]["models"]] == ["beat-model"]


def test_a_client_cannot_forge_the_access_log_either(router: Proc) -> None:
    """The request log escapes what a client sends: a model it names, a path with raw bytes."""
    key = create_key(router.url, ["api"], name="client")
    since = len(router.log())
    response = httpx.post(
        f"{router.url}/v1/chat/completions",
        json={"model": FORGED, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 404, response.text
    host, port = router.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # Raw bytes over 0x7f in the request line are refused by the HTTP parser (a 400 before any
        # log line); a percent-encoded newline reaches the app and is logged as sent.
        sock.sendall(b"GET /v1/x%0aFORGED%E2%80%A8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 404"), "no answer"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v1/x\x85\xe2\x80\xa8 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head, answer
    assert json.loads(body)["error"]["code"] == "invalid_http_request", answer
    wait_until(lambda: "/v1/x" in router.log()[since:], 5, "the access line of the raw path")
    assert_no_forged_line(router, since)


def test_an_endpoint_model_list_is_filtered_and_bounded(router: Proc, tmp_path: Path) -> None:
    """An admin-registered server that lists a forging id and more models than the bound: the
    router serves the valid ones up to the bound and says in one escaped line what it left out."""
    listed = [{"id": FORGED}] + [{"id": f"e{i}"} for i in range(MAX_MODELS + 10)]
    server = FakeNode(router.url, "unused", "unused", [])
    server.answers["/v1/models"] = Answer(body=json.dumps({"object": "list", "data": listed}).encode())
    server.server.start()
    since = len(router.log())
    try:
        created = httpx.post(
            f"{router.url}/v0/endpoints",
            json={"name": "listy", "url": server.url, "capabilities": ["chat_completion"]},
            headers=ADMIN,
            timeout=30,
        )
        assert created.status_code == 201, created.text
        served = [m["id"] for m in created.json()["served_models"]]
        assert served == [f"e{i}" for i in range(MAX_MODELS)], served
        left_out = [line for line in log_lines(router, since) if "models not served" in line]
        assert len(left_out) == 1 and '"evil\\nFORGED-LINE <img src=x>' in left_out[0], left_out
        assert "10 more (over max_models_per_node=50)" in left_out[0], left_out
        assert_no_forged_line(router, since)
    finally:
        httpx.delete(f"{router.url}/v0/endpoints/listy", headers=ADMIN, timeout=10)
        server.server.stop()
