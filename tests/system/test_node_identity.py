"""Node identity and trust boundaries (issue 8, items 1, 2, 9, 10, 12) through real router and
node processes: a node id belongs to the key that first registered it; ``endpoint:*`` ids are
admin-only; bound keys; admin release; restarts; drains that end; the node-name charset;
endpoint keys and API key input validated before anything is saved."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb_node.settings import sanitized_hostname
from tests.support.servers import (
    ADMIN_KEY,
    REPO,
    Proc,
    admin_get,
    base_env,
    create_key,
    free_port,
    node_proc,
    node_status,
    router_proc,
    wait_until,
)
from tests.support.text_fixtures import UPSTREAM_KEY, backend, register_endpoint, wait_endpoint

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
IMAGE = {"model": "demo", "prompt": "x", "size": "256x256", "steps": 1, "response_format": "b64_json"}
DEMO_ADVERT = {
    "id": "demo",
    "capabilities": ["image_generation", "image_edit"],
    "runtime": "stable_diffusion",
}


class Recorder:
    """A loopback HTTP server that answers 200 to anything and records every request: the
    attacker's server, which must never see a user's request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.requests.append((self.command, self.path))
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = b'{"created": 0, "data": [{"b64_json": "AAAA"}]}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def attacker() -> Iterator[Recorder]:
    recorder = Recorder()
    recorder.thread.start()
    yield recorder
    recorder.stop()


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def node_view(router_url: str, name: str) -> dict[str, Any]:
    return next(n for n in admin_get(router_url, "/v0/nodes")["data"] if n["name"] == name)


def registration(node_id: str, base_url: str, name: str = "evil") -> dict[str, Any]:
    return {
        "node_id": node_id,
        "name": name,
        "base_url": base_url,
        "token": "attacker-token",
        "runtime_types": ["stable_diffusion"],
        "models": [DEMO_ADVERT],
        "slots": 4,
    }


def post(router_url: str, path: str, key: str, body: Any = None) -> httpx.Response:
    return httpx.post(
        f"{router_url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def generate(router_url: str, api_key: str) -> httpx.Response:
    return httpx.post(
        f"{router_url}/v1/images/generations",
        json=IMAGE,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=120,
    )


def key_info(router_url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = httpx.post(f"{router_url}/v0/keys", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["info"]


# --- 1. takeover ----------------------------------------------------------------------------
def test_another_node_key_cannot_take_over_a_node_id(
    router: Proc, sd_node: Proc, api_key: str, attacker: Recorder
) -> None:
    before = node_view(router.url, "sd-node-1")
    intruder = create_key(router.url, ["node"], name="intruder")
    taken = post(router.url, "/v0/nodes/register", intruder, registration(before["id"], attacker.url))
    assert_error(taken, 403, "node_id_taken", "node_id")
    after = node_view(router.url, "sd-node-1")
    assert (after["id"], after["base_url"], after["status"]) == (before["id"], sd_node.url, "online")
    assert after["registered_at"] == before["registered_at"]  # the entry is unchanged
    served = generate(router.url, api_key)
    assert served.status_code == 200, served.text
    assert served.headers["x-llmlb-node"] == before["id"]
    assert attacker.requests == []


# --- 2. heartbeat, drain, resume, deregister of someone else's node --------------------------
def test_another_node_key_cannot_heartbeat_drain_resume_or_deregister(
    router: Proc, sd_node: Proc, node_key: str, api_key: str
) -> None:
    node_id = node_view(router.url, "sd-node-1")["id"]
    intruder = create_key(router.url, ["node"], name="intruder")
    spoof = {"node_id": node_id, "models": [], "free_slots": 9}
    assert_error(post(router.url, "/v0/nodes/heartbeat", intruder, spoof), 403, "not_node_owner")
    for action in ("drain", "resume", "deregister"):
        assert_error(post(router.url, f"/v0/nodes/{node_id}/{action}", intruder), 403, "not_node_owner")
    view = node_view(router.url, "sd-node-1")
    assert view["status"] == "online" and [m["id"] for m in view["models"]] == ["demo"]
    listed = httpx.get(f"{router.url}/v1/models", headers={"authorization": f"Bearer {api_key}"}).json()
    assert [m["id"] for m in listed["data"]] == ["demo"]
    # The owner may drain and resume its own node: a drain ends.
    assert post(router.url, f"/v0/nodes/{node_id}/drain", node_key).json() == {
        "id": node_id,
        "draining": True,
    }
    assert node_status(router.url, "sd-node-1") == "draining"
    assert_error(generate(router.url, api_key), 503, "no_capable_nodes")
    assert post(router.url, f"/v0/nodes/{node_id}/resume", node_key).json() == {
        "id": node_id,
        "draining": False,
    }
    assert node_status(router.url, "sd-node-1") == "online"
    assert generate(router.url, api_key).status_code == 200
    assert_error(post(router.url, "/v0/nodes/nope-1/drain", node_key), 404, "node_not_found")


def test_endpoint_ids_are_admin_only_on_every_node_route(tmp_path: Path, procs: list[Proc]) -> None:
    router = router_proc(
        tmp_path, env={"LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.3", "LLMLB_NODE_TIMEOUT_S": "2"}
    )
    procs.append(router)
    router.start().wait_healthy()
    node_key = create_key(router.url, ["node"], name="node")
    with backend("up", ["tiny-chat"]) as up:
        register_endpoint(router.url, "up", up.url, api_key=UPSTREAM_KEY)
        wait_endpoint(router.url, "up")
        spoof = {"node_id": "endpoint:up", "models": []}
        assert_error(post(router.url, "/v0/nodes/heartbeat", node_key, spoof), 403, "endpoint_admin_only")
        for action in ("drain", "resume", "deregister"):
            refused = post(router.url, f"/v0/nodes/endpoint:up/{action}", node_key)
            assert_error(refused, 403, "endpoint_admin_only")
        hijack = registration("endpoint:up", "http://127.0.0.1:9")
        assert_error(post(router.url, "/v0/nodes/register", node_key, hijack), 400, param="node_id")
        view = node_view(router.url, "up")
        assert view["status"] == "online" and [m["id"] for m in view["models"]] == ["tiny-chat"]
        # An admin drains an endpoint and resumes it (a drain is not forever).
        assert post(router.url, "/v0/nodes/endpoint:up/drain", ADMIN_KEY).status_code == 200
        assert node_view(router.url, "up")["status"] == "draining"
        assert post(router.url, "/v0/nodes/endpoint:up/resume", ADMIN_KEY).status_code == 200
        assert node_view(router.url, "up")["status"] == "online"
        # Releasing an endpoint's id is not the way to remove it.
        release = httpx.delete(f"{router.url}/v0/nodes/endpoint:up", headers=ADMIN)
        assert_error(release, 400, param="node_id")


# --- bound keys and admin release --------------------------------------------------------------
def test_a_bound_key_acts_only_on_its_node(
    tmp_path: Path, router: Proc, sd_node: Proc, models_dir: Path, procs: list[Proc], api_key: str
) -> None:
    bound, info = key_info(router.url, {"name": "gpu-1 key", "scopes": ["node"], "node_id": "gpu-1"})
    assert info["node_id"] == "gpu-1"
    listed = httpx.get(f"{router.url}/v0/keys", headers=ADMIN).json()["data"]
    assert [k["node_id"] for k in listed if k["id"] == info["id"]] == ["gpu-1"]
    other_id = node_view(router.url, "sd-node-1")["id"]
    refused = post(router.url, "/v0/nodes/register", bound, registration("gpu-2", "http://127.0.0.1:9"))
    assert_error(refused, 403, "key_bound_to_other_node")
    assert_error(post(router.url, f"/v0/nodes/{other_id}/drain", bound), 403, "key_bound_to_other_node")
    assert node_status(router.url, "evil") is None and node_status(router.url, "sd-node-1") == "online"
    # Its own node registers and serves.
    node = node_proc(tmp_path, router.url, models_dir, bound, name="gpu-one", extra=["--node-id", "gpu-1"])
    procs.append(node)
    node.start().wait_healthy(60).wait_online(router.url)
    assert node_view(router.url, "gpu-one")["id"] == "gpu-1"
    assert post(router.url, "/v0/nodes/gpu-1/drain", bound).status_code == 200
    assert post(router.url, "/v0/nodes/gpu-1/resume", bound).status_code == 200
    # Bindings are for node keys, and use the node-name charset.
    for body in (
        {"name": "x", "scopes": ["admin"], "node_id": "gpu-1"},
        {"name": "x", "scopes": ["api"], "node_id": "gpu-1"},
        {"name": "x", "scopes": ["node"], "node_id": "gpu 1"},
        {"name": "x", "scopes": ["node"], "node_id": "gpu-1\n"},
    ):
        bad = httpx.post(f"{router.url}/v0/keys", json=body, headers=ADMIN)
        assert_error(bad, 400, param="node_id")


def test_cli_creates_a_bound_node_key(router: Proc) -> None:
    done = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "llmlb_core.cli.main",
                "keys",
                "--router",
                router.url,
                "--admin-key",
                ADMIN_KEY,
            ),
            *("create", "gpu-7 key", "--scope", "node", "--node", "gpu-7", "--json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=base_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["info"]["node_id"] == "gpu-7" and created["info"]["scopes"] == ["node"]
    refused = post(
        router.url, "/v0/nodes/register", created["key"], registration("gpu-8", "http://127.0.0.1:9")
    )
    assert_error(refused, 403, "key_bound_to_other_node")


def test_admin_release_moves_an_id_from_a_revoked_key_to_another(
    tmp_path: Path, router: Proc, models_dir: Path, procs: list[Proc], api_key: str
) -> None:
    old_key, old_info = key_info(router.url, {"name": "old", "scopes": ["node"]})
    first = node_proc(tmp_path, router.url, models_dir, old_key, name="first", extra=["--node-id", "gpu-5"])
    procs.append(first)
    first.start().wait_healthy(60).wait_online(router.url)
    new_key = create_key(router.url, ["node"], name="new")
    # The owner's key is revoked: the node can no longer heartbeat, and the id stays taken.
    assert httpx.delete(f"{router.url}/v0/keys/{old_info['id']}", headers=ADMIN).status_code == 200
    wait_until(lambda: node_status(router.url, "first") == "offline", 10, "first offline")
    taken = post(router.url, "/v0/nodes/register", new_key, registration("gpu-5", "http://127.0.0.1:9"))
    assert_error(taken, 403, "node_id_taken")
    assert_error(httpx.delete(f"{router.url}/v0/nodes/gpu-5", headers={"x-api-key": new_key}), 403)
    released = httpx.delete(f"{router.url}/v0/nodes/gpu-5", headers=ADMIN)
    assert released.status_code == 200 and released.json() == {"id": "gpu-5", "released": True}
    assert node_status(router.url, "first") is None
    assert_error(httpx.delete(f"{router.url}/v0/nodes/gpu-5", headers=ADMIN), 404)
    second = node_proc(tmp_path, router.url, models_dir, new_key, name="second", extra=["--node-id", "gpu-5"])
    procs.append(second)
    second.start().wait_healthy(60).wait_online(router.url)
    view = node_view(router.url, "second")
    assert (view["id"], view["base_url"]) == ("gpu-5", second.url)
    new_id = next(k["id"] for k in admin_get(router.url, "/v0/keys")["data"] if k["name"] == "new")
    assert view["owner_key_id"] == new_id != old_info["id"]
    served = generate(router.url, api_key)
    assert served.status_code == 200 and served.headers["x-llmlb-node"] == "gpu-5"


# --- restarts --------------------------------------------------------------------------------
def test_a_restarted_node_reregisters_under_a_fresh_id_and_replaces_its_stale_entry(
    tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    port = free_port()

    def start() -> tuple[Proc, str]:
        proc = node_proc(tmp_path, router.url, models_dir, node_key, port=port, name="phoenix")
        procs.append(proc)
        proc.start().wait_healthy(60).wait_online(router.url)
        return proc, node_view(router.url, "phoenix")["id"]

    first, first_id = start()
    assert re.fullmatch(rf"{re.escape(sanitized_hostname())}-{port}-[0-9a-f]{{8}}", first_id), first_id
    first.signal(signal.SIGKILL)  # no deregistration: its entry goes offline
    wait_until(lambda: node_status(router.url, "phoenix") == "offline", 10, "phoenix offline")
    second, second_id = start()
    assert second_id != first_id
    entries = [n for n in admin_get(router.url, "/v0/nodes")["data"] if n["base_url"] == second.url]
    assert [(n["id"], n["status"]) for n in entries] == [(second_id, "online")]
    # A graceful stop deregisters: the id leaves the list but stays claimed by its key ...
    second.stop()
    wait_until(lambda: node_status(router.url, "phoenix") is None, 10, "phoenix deregistered")
    intruder = create_key(router.url, ["node"], name="intruder")
    taken = post(router.url, "/v0/nodes/register", intruder, registration(second_id, "http://127.0.0.1:9"))
    assert_error(taken, 403, "node_id_taken")
    # ... until the same key registers a node at that address again.
    _, third_id = start()
    db = sqlite3.connect(router.args[router.args.index("--data-dir") + 1] + "/llmlb.sqlite3")
    try:
        rows = db.execute("SELECT id FROM nodes").fetchall()
    finally:
        db.close()
    assert rows == [(third_id,)]


def test_a_node_with_a_stable_id_restarts_with_its_key_and_its_drain_ends(
    tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc], api_key: str
) -> None:
    port = free_port()
    extra = ["--node-id", "stable-1"]
    first = node_proc(tmp_path, router.url, models_dir, node_key, port=port, name="stable", extra=extra)
    procs.append(first)
    first.start().wait_healthy(60).wait_online(router.url)
    assert post(router.url, "/v0/nodes/stable-1/drain", ADMIN_KEY).status_code == 200  # e.g. by an admin
    assert node_status(router.url, "stable") == "draining"
    first.signal(signal.SIGKILL)
    wait_until(lambda: node_status(router.url, "stable") == "offline", 10, "stable offline")
    second = node_proc(tmp_path, router.url, models_dir, node_key, port=port, name="stable", extra=extra)
    procs.append(second)
    second.start().wait_healthy(60).wait_online(router.url)  # online: not draining any more
    assert [n["id"] for n in admin_get(router.url, "/v0/nodes")["data"]] == ["stable-1"]
    assert generate(router.url, api_key).status_code == 200


# --- hostile names -----------------------------------------------------------------------------
def test_node_ids_names_and_urls_outside_the_charset_are_400(router: Proc, node_key: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "evil\n2026-01-01 INFO llmlb.nodes: forged"}, "name"),
        ({"name": "evil\n"}, "name"),  # a trailing newline, which `$` in a regex would let through
        ({"name": "evil\r"}, "name"),
        ({"name": "a b"}, "name"),
        ({"node_id": "x\r\ny"}, "node_id"),
        ({"node_id": "host:8090"}, "node_id"),
        ({"node_id": "-x"}, "node_id"),
        ({"node_id": "x" * 65}, "node_id"),
        ({"base_url": "http://127.0.0.1:9/\r\nX-Evil: 1"}, "base_url"),
        ({"base_url": "file:///etc/passwd"}, "base_url"),
    ]
    for change, param in cases:
        body = {**registration("fine-1", "http://127.0.0.1:9", name="fine"), **change}
        assert_error(post(router.url, "/v0/nodes/register", node_key, body), 400, param=param)
    bad_beat = post(router.url, "/v0/nodes/heartbeat", node_key, {"node_id": "a\nb"})
    assert_error(bad_beat, 400, param="node_id")
    assert admin_get(router.url, "/v0/nodes")["data"] == []
    assert "forged" not in router.log()


def test_node_default_names_are_sanitised_and_bad_flags_refused(tmp_path: Path) -> None:
    assert sanitized_hostname("my host:name\n.local") == "my-host-name-.local"
    assert sanitized_hostname("--_x_") == "x"
    assert sanitized_hostname("\n\t") == "node"
    assert len(sanitized_hostname("a" * 300)) == 40
    done = subprocess.run(
        [sys.executable, "-m", "llmlb_core.cli", "node", "--api-key", "k", "--name", "bad\nname"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=base_env(),
        timeout=60,
    )
    assert done.returncode == 2 and "invalid node setting" in done.stderr and "Traceback" not in done.stderr


# --- endpoints: hostile upstream keys --------------------------------------------------------
def test_endpoint_key_url_or_name_with_control_characters_is_400_and_nothing_is_saved(router: Proc) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"api_key": "sk-a\r\nX-Injected: 1"}, "api_key"),
        ({"api_key": "sk-a\n"}, "api_key"),
        ({"api_key": "sk-\x00"}, "api_key"),
        ({"api_key": "sk-é"}, "api_key"),
        ({"url": "http://127.0.0.1:9\r\n"}, "url"),
        ({"url": "http://127.0.0.1:9/\x01"}, "url"),
        ({"name": "up\n"}, "name"),
    ]
    for change, param in cases:
        body = {"name": "up", "url": "http://127.0.0.1:9", **change}
        response = httpx.post(f"{router.url}/v0/endpoints", json=body, headers=ADMIN, timeout=10)
        assert_error(response, 400, param=param)
    assert admin_get(router.url, "/v0/endpoints")["data"] == []
    assert admin_get(router.url, "/v0/nodes")["data"] == []


OLD_SCHEMA = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL, scopes TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
CREATE TABLE nodes (id TEXT PRIMARY KEY, record TEXT NOT NULL, registered_at REAL NOT NULL,
    last_seen_at REAL NOT NULL);
CREATE TABLE endpoints (name TEXT PRIMARY KEY, record TEXT NOT NULL, created_at REAL NOT NULL);
"""


def test_an_older_database_is_migrated_and_a_stored_bad_endpoint_is_skipped_with_one_warning(
    tmp_path: Path, procs: list[Proc]
) -> None:
    data_dir = tmp_path / "router-data"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "llmlb.sqlite3")
    db.executescript(OLD_SCHEMA)
    legacy = registration("legacy-1", "http://127.0.0.1:9", name="legacy")
    db.execute("INSERT INTO nodes VALUES (?, ?, 1, 1)", ("legacy-1", json.dumps({**legacy, "token": ""})))
    old_default = {**legacy, "node_id": "host:8090", "token": ""}  # the old default id
    db.execute("INSERT INTO nodes VALUES (?, ?, 1, 1)", ("host:8090", json.dumps(old_default)))
    bad = {"name": "old", "url": "http://127.0.0.1:9", "api_key": "sk-a\r\nX-Injected: 1", "kind": "generic"}
    db.execute("INSERT INTO endpoints VALUES ('old', ?, 1)", (json.dumps(bad),))
    db.commit()
    db.close()
    router = router_proc(
        tmp_path,
        data_dir=data_dir,
        env={"LLMLB_ENDPOINT_CHECK_INTERVAL_S": "0.1", "LLMLB_NODE_TIMEOUT_S": "2"},
    )
    procs.append(router)
    router.start().wait_healthy()
    assert admin_get(router.url, "/v0/endpoints")["data"] == []
    # A node key claims the unowned legacy id by registering it; others may not touch it.
    first = create_key(router.url, ["node"], name="first")
    second = create_key(router.url, ["node"], name="second")
    assert_error(post(router.url, "/v0/nodes/legacy-1/drain", first), 403, "not_node_owner")
    assert post(router.url, "/v0/nodes/register", first, legacy).status_code == 200
    assert_error(post(router.url, "/v0/nodes/register", second, legacy), 403, "node_id_taken")
    assert [n["id"] for n in admin_get(router.url, "/v0/nodes")["data"]] == ["legacy-1"]
    wait_until(lambda: "router ready" in router.log(), 10, "router ready")
    time.sleep(1.0)  # ten check intervals: a bad record must not log once per check
    log = router.log()
    warnings = [line for line in log.splitlines() if re.search(r"\bold\b", line) and "endpoint" in line]
    assert len(warnings) == 1, log
    assert "skipping stored endpoint 'old'" in warnings[0] and "DELETE /v0/endpoints/old" in warnings[0]
    assert "Traceback" not in log and "sk-a" not in log
    assert httpx.delete(f"{router.url}/v0/endpoints/old", headers=ADMIN).status_code == 200
    db = sqlite3.connect(data_dir / "llmlb.sqlite3")
    try:
        node_columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
        key_columns = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
        assert db.execute("SELECT COUNT(*) FROM endpoints").fetchone() == (0,)
    finally:
        db.close()
    assert {"owner_key_id", "deregistered_at"} <= node_columns and "node_id" in key_columns


# --- API key input -----------------------------------------------------------------------------
def test_key_names_with_control_characters_and_past_expiries_are_400(router: Proc) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "alice\nINFO forged"}, "name"),
        ({"name": "alice\n"}, "name"),
        ({"name": "bell\x07"}, "name"),
        ({"name": "x", "expires_at": time.time() - 60}, "expires_at"),
        ({"name": "x", "expires_at": 0}, "expires_at"),
        ({"name": "x", "expires_in_s": 0}, "expires_in_s"),
        ({"name": "x", "expires_in_s": 60, "expires_at": time.time() + 60}, "expires_in_s"),
    ]
    before = admin_get(router.url, "/v0/keys")["data"]
    for change, param in cases:
        response = httpx.post(f"{router.url}/v0/keys", json={"scopes": ["api"], **change}, headers=ADMIN)
        assert_error(response, 400, param=param)
    assert admin_get(router.url, "/v0/keys")["data"] == before
    _, info = key_info(router.url, {"name": "Zoë's key (2026)", "expires_at": time.time() + 3600})
    assert info["name"] == "Zoë's key (2026)" and info["node_id"] is None
