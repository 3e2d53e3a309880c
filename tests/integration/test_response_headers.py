"""Headers every answer carries (issue 17, items 5 and 8), over real loopback HTTP: a router with
the built-in capabilities and the echo capability, and an echo node, in process.

- ``x-content-type-options: nosniff`` on every answer of the router and of the node, once: the
  router's own routes, Litestar's 404 / 405, a refused key, the docs, the dashboard, an answer
  relayed from a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class System:
    router: ThreadServer
    node: ThreadServer
    api_key: str


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    servers: list[ThreadServer] = []
    try:
        router = start_router(Path(tmp_path_factory.mktemp("headers")) / "data", plugins=[EchoCapability()])
        servers.append(router)
        servers.append(start_node(router.url, [EchoRuntimePlugin()], name="echo-node", runtimes=["echo"]))
        yield System(router, servers[1], create_key(router.url, ["api"], name="client"))
    finally:
        for server in reversed(servers):
            server.stop()


def router_answers(system: System) -> dict[str, httpx.Response]:
    """One answer of each kind the router gives, by what it is."""
    url = system.router.url
    api = {"authorization": f"Bearer {system.api_key}"}
    with httpx.Client(base_url=url, timeout=10) as client:
        return {
            "health": client.get("/health"),
            "models": client.get("/v1/models", headers=api),
            "no key": client.get("/v1/models"),
            "unknown path": client.get("/no/such/path"),
            "wrong method": client.delete("/health"),
            "relayed from a node": client.post(
                "/v1/echo", json={"model": "echo-1", "text": "hi"}, headers=api
            ),
            "metrics": client.get("/metrics", headers=ADMIN),
            "docs page": client.get("/docs"),
            "docs asset": client.get("/docs/assets/swagger-ui.css"),
            "docs schema": client.get("/docs/openapi.json"),
            "dashboard page": client.get("/dashboard/login"),
            "dashboard script": client.get("/dashboard/static/app.js"),
            "dashboard relay": client.get("/dashboard/api/v0/status"),
            "image file": client.get("/v1/images/files/" + "a" * 43 + ".png"),
        }


def node_answers(system: System) -> dict[str, httpx.Response]:
    url = system.node.url
    with httpx.Client(base_url=url, timeout=10) as client:
        return {
            "node health": client.get("/health"),
            "node without the router's credential": client.post("/v1/echo", json={"model": "echo-1"}),
            "node unknown path": client.get("/no/such/path"),
        }


def test_every_answer_says_nosniff_once(system: System) -> None:
    answers = {**router_answers(system), **node_answers(system)}
    assert answers["relayed from a node"].status_code == 200, answers["relayed from a node"].text
    assert {answers[k].status_code for k in ("no key", "unknown path", "wrong method")} == {401, 404, 405}
    for what, response in answers.items():
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], what
