"""Several routers, one state: real routers (``llmlb serve`` processes) on one real PostgreSQL and
one real Redis, nginx in front, and real nodes (``llmlb node``, the openai_compatible runtime in
front of a loopback upstream whose answers take as long as a test asks: ``x_sleep``).

Each freshness bound of docs/scaling.md is measured here: a revocation refused on every router
within 1 s, a node registered through one router served by the others within 2 s, a drain seen
everywhere within 1 s, a node's one slot never used twice at once by two routers, a SIGKILLed
router's slots free within 5 s with an SDK client behind nginx losing no request, and Redis
down: every router serves on alone, with one warning line, and shares again when it returns.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from bench._common import wait_until
from tests.support.dashboard_client import COOKIE, csrf_of, sign_in
from tests.support.nginx import NginxBalancer
from tests.support.redis import RedisServer
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, node_proc, router_proc
from tests.support.text_fixtures import UPSTREAM_KEY, Backend, backend

SECRET = "replicas-secret-key-0123456789"
MODEL = "shared-model"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Fleet:
    routers: list[Proc]
    upstream: Backend
    tmp: Path
    env: dict[str, str]
    procs: list[Proc]

    def router(self, index: int) -> Proc:
        return self.routers[index]

    def add_router(self) -> Proc:
        router = router_proc(self.tmp, data_dir=self.tmp / f"data-{len(self.routers)}", env=self.env)
        self.procs.append(router)
        self.routers.append(router.start().wait_healthy())
        return router

    def add_node(self, routers: list[Proc] | str, name: str, slots: int = 1) -> Proc:
        """A node told of ``routers`` (or of one URL: a load balancer in front of them)."""
        urls = [routers] if isinstance(routers, str) else [r.url for r in routers]
        node = node_proc(
            self.tmp,
            urls[0],
            self.tmp / "no-models",
            ADMIN_KEY,
            name=name,
            extra=[
                "--runtime", "openai_compatible",
                "--upstream", f"{self.upstream.url}/v1",
                "--upstream-key", UPSTREAM_KEY,
                "--upstream-model", MODEL,
                "--upstream-capability", "text_generation",
                "--upstream-slots", str(slots),
                *(arg for url in urls[1:] for arg in ("--router", url)),
            ],
        )  # fmt: skip
        self.procs.append(node)
        return node.start().wait_healthy()


def nodes_of(router: Proc) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in admin_get(router.url, "/v0/nodes")["data"]}


def status_of(router: Proc, name: str) -> str | None:
    node = nodes_of(router).get(name)
    return None if node is None else str(node["status"])


def node_id(router: Proc, name: str) -> str:
    return str(nodes_of(router)[name]["id"])


def models_status(router: Proc, headers: dict[str, str]) -> int:
    return httpx.get(f"{router.url}/v1/models", headers=headers, timeout=5).status_code


def shared_state(router: Proc) -> str:
    return str(httpx.get(f"{router.url}/health", timeout=5).json()["shared_state"])


def chat(url: str, key: str, *, sleep: float = 0.0, timeout: float = 30) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if sleep:
        body["x_sleep"] = sleep
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout
    )


def seconds_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    wait_until(predicate, timeout, what, interval=0.02)
    return time.monotonic() - start


@pytest.fixture
def fleet(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    procs: list[Proc] = []
    env = {
        "LLMLB_DATABASE_URL": postgres_url,
        "LLMLB_REDIS_URL": redis_url,
        "LLMLB_SECRET_KEY": SECRET,
        "LLMLB_NODE_TIMEOUT_S": "5",
        "LLMLB_CAPABILITIES": "text,images,dashboard",
    }
    with backend("up", [MODEL]) as upstream:
        fleet = Fleet([], upstream, tmp_path, env, procs)
        try:
            fleet.add_router()
            fleet.add_router()
            yield fleet
        finally:
            for proc in reversed(procs):
                proc.stop()


def test_a_key_made_or_revoked_on_one_router_counts_on_every_router_within_1s(fleet: Fleet) -> None:
    a, b = fleet.router(0), fleet.router(1)
    key = create_key(a.url, ["api"], name="client")
    headers = {"authorization": f"Bearer {key}"}
    made = seconds_until(lambda: models_status(b, headers) == 200, 5, "key on b")
    assert made < 1.0
    key_id = next(k["id"] for k in admin_get(a.url, "/v0/keys")["data"] if k["name"] == "client")
    assert httpx.delete(f"{a.url}/v0/keys/{key_id}", headers=ADMIN, timeout=5).status_code == 200
    revoked = seconds_until(lambda: models_status(b, headers) == 401, 5, "refused on b")
    assert revoked < 1.0
    refused = httpx.get(f"{b.url}/v1/models", headers=headers, timeout=5)
    assert refused.json()["error"]["code"] == "revoked_api_key"


def test_a_node_registered_through_one_router_is_served_by_all_and_drained_everywhere(fleet: Fleet) -> None:
    a, b = fleet.router(0), fleet.router(1)
    api_key = create_key(a.url, ["api"])
    node = fleet.add_node([a], "gpu-a")
    wait_until(lambda: nodes_of(a).get("gpu-a", {}).get("status") == "online", 20, "online on a")
    seen = seconds_until(lambda: nodes_of(b).get("gpu-a", {}).get("status") == "online", 5, "online on b")
    assert seen < 2.0
    answer = chat(b.url, api_key)
    assert answer.status_code == 200, answer.text
    assert "up heard: hi" in answer.json()["choices"][0]["message"]["content"]

    # A failure seen through b makes the node suspect on a too.
    fleet.upstream.state.broken.add(MODEL)
    assert chat(b.url, api_key).status_code >= 500
    fleet.upstream.state.broken.clear()
    marked = seconds_until(lambda: nodes_of(a)["gpu-a"]["suspect"], 5, "suspect on a")
    assert marked < 1.0
    assert nodes_of(a)["gpu-a"]["recent_failures"][-1]["reason"] == "HTTP 500"
    assert "credential" not in b.log() and SECRET not in b.log() + a.log()
    # The node's credential crosses Redis sealed with secret_key, never in clear.
    shared = json.loads(
        redis.Redis.from_url(fleet.env["LLMLB_REDIS_URL"]).hget("llmlb:nodes", node_id(a, "gpu-a"))
    )
    assert shared["sealed"] and shared["registration"]["token"].startswith("gAAAA")

    drain = httpx.post(f"{b.url}/v0/nodes/{node_id(a, 'gpu-a')}/drain", headers=ADMIN, timeout=5)
    assert drain.status_code == 200, drain.text
    drained = seconds_until(lambda: nodes_of(a)["gpu-a"]["status"] == "draining", 5, "draining on a")
    assert drained < 1.0
    assert chat(a.url, api_key).status_code == 503  # no node takes new work

    node.stop()  # deregisters through a: gone from b too
    wait_until(lambda: "gpu-a" not in nodes_of(b), 5, "gone from b")


def test_one_slot_is_never_used_twice_by_two_routers(fleet: Fleet) -> None:
    a, b = fleet.router(0), fleet.router(1)
    api_key = create_key(a.url, ["api"])
    fleet.add_node([a], "one-slot", slots=1)
    for router in (a, b):
        wait_until(lambda r=router: nodes_of(r).get("one-slot", {}).get("status") == "online", 20, "online")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: chat((a, b)[i % 2].url, api_key, sleep=0.4), range(6)))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert fleet.upstream.state.max_active == 1
    assert sum(r.headers.get("x-queue-status") == "queued" for r in answers) >= 4


def test_a_killed_router_frees_its_slots_and_nginx_clients_lose_nothing(fleet: Fleet) -> None:
    a, b = fleet.router(0), fleet.router(1)
    api_key = create_key(a.url, ["api"])
    fleet.add_node([a, b], "survivor", slots=1)
    for router in (a, b):
        wait_until(lambda r=router: nodes_of(r).get("survivor", {}).get("status") == "online", 20, "online")
    with NginxBalancer([a.url.removeprefix("http://"), b.url.removeprefix("http://")]) as lb:
        # An SDK client (default retries) sends through nginx all along.
        client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key=api_key)
        sent: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def keep_sending() -> None:
            while not stop.is_set():
                text = str(len(sent))
                try:
                    messages: Any = [{"role": "user", "content": text}]
                    reply = client.chat.completions.create(model=MODEL, messages=messages)
                    assert reply.choices[0].message.content == f"up heard: {text}"
                except BaseException as exc:
                    failures.append(exc)
                sent.append(text)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            # a takes the node's one slot with a long request, then dies holding it.
            pool = concurrent.futures.ThreadPoolExecutor(1)
            pending = pool.submit(chat, a.url, api_key, sleep=10, timeout=60)
            wait_until(lambda: fleet.upstream.state.active == 1, 10, "a's job running")
            before = len(sent)
            killed_at = time.monotonic()
            a.signal(signal.SIGKILL)
            freed = chat(b.url, api_key, timeout=30)
            freed_after = time.monotonic() - killed_at
            assert freed.status_code == 200, freed.text
            assert freed_after < 5.0, freed_after  # a's liveness key expired, its slot came back
            wait_until(lambda: len(sent) >= before + 10, 30, "the SDK client goes on through nginx")
        finally:
            stop.set()
            sender.join(60)
        assert failures == [], failures
        with pytest.raises(httpx.HTTPError):
            pending.result()
        pool.shutdown()
    # Nothing durable lost: b still has the key and the node.
    assert models_status(b, {"authorization": f"Bearer {api_key}"}) == 200
    assert nodes_of(b)["survivor"]["status"] == "online"


def test_redis_down_each_router_serves_alone_then_shares_again(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    a, b = fleet.router(0), fleet.router(1)
    api_key = create_key(a.url, ["api"])
    fleet.add_node([a, b], "steady", slots=2)
    for router in (a, b):
        wait_until(lambda r=router: nodes_of(r).get("steady", {}).get("status") == "online", 20, "online")
    redis_server.down()
    for router in (a, b):
        for _ in range(3):
            assert chat(router.url, api_key).status_code == 200
        wait_until(lambda r=router: "redis" in r.log() and "unreachable" in r.log(), 5, "warning")
        assert shared_state(router) == "down"
    redis_server.up()
    for router in (a, b):
        wait_until(lambda r=router: shared_state(r) == "up", 10, "back")
        warnings = [line for line in router.log().splitlines() if "unreachable" in line and "redis" in line]
        assert len(warnings) == 1, warnings
        assert "Traceback" not in router.log()
    # Shared again: a node registered through a is served through b.
    fleet.add_node([a], "after")
    wait_until(lambda: nodes_of(b).get("after", {}).get("status") == "online", 5, "after on b")
    threading.Event().wait(0.1)


def test_behind_nginx_images_by_url_and_dashboard_sessions_cross_routers(
    fleet: Fleet, models_dir: Path
) -> None:
    a, b = fleet.router(0), fleet.router(1)
    api_key = create_key(a.url, ["api"])
    with NginxBalancer([a.url.removeprefix("http://"), b.url.removeprefix("http://")]) as lb:
        # A node that knows only the load balancer: its heartbeats reach both routers in turn.
        text_node = fleet.add_node(lb.url, "text-node")
        images = node_proc(fleet.tmp, a.url, models_dir, ADMIN_KEY, name="sd-node", extra=["--threads", "2"])
        fleet.procs.append(images)
        images.start().wait_healthy(60)
        for router in (a, b):
            for name in ("text-node", "sd-node"):
                wait_until(
                    lambda r=router, n=name: nodes_of(r).get(n, {}).get("status") == "online", 20, name
                )
        client = openai.OpenAI(base_url=f"{lb.url}/v1", api_key=api_key)
        made = client.images.generate(
            model="demo",
            prompt="a red square",
            size="256x256",
            response_format="url",
            extra_body={"steps": 1},
        )
        assert made.data and made.data[0].url
        name = made.data[0].url.rpartition("/")[2]
        served = [httpx.get(f"{r.url}/v1/images/files/{name}", timeout=10) for r in (a, b)]
        assert [s.status_code for s in served] == [200, 200]
        assert served[0].content == served[1].content and served[0].content.startswith(b"\x89PNG")
        for i in range(4):
            messages: Any = [{"role": "user", "content": f"both {i}"}]
            reply = client.chat.completions.create(model=MODEL, messages=messages)
            assert reply.choices[0].message.content == f"up heard: both {i}"
        # Its heartbeats went to both routers, which both knew it: it registered once.
        assert text_node.log().count("registered with") <= 1, text_node.log()
        assert all(nodes_of(r)["text-node"]["status"] == "online" for r in (a, b))

    with httpx.Client(base_url=a.url, timeout=10) as on_a, httpx.Client(base_url=b.url, timeout=10) as on_b:
        on_b.cookies.set(COOKIE, sign_in(on_a))
        page = on_b.get("/dashboard")  # signed in through a, working through b
        assert page.status_code == 200 and csrf_of(page.text)
        nodes = on_b.get("/dashboard/api/v0/nodes")
        assert nodes.status_code == 200, nodes.text
        assert {n["name"] for n in nodes.json()["data"]} == {"text-node", "sd-node"}
