"""Headers every answer carries (issue 17, items 5 and 8), over real loopback HTTP: a router with
the built-in capabilities and the echo capability, an echo node, and a node running the
``openai_compatible`` runtime in front of a loopback OpenAI-compatible server, all in process.

- ``x-content-type-options: nosniff`` on every answer of the router and of the node, once: the
  router's own routes, Litestar's 404 / 405, a refused key, the docs, the dashboard, an answer
  relayed from a node.
- One content type, with at most one charset: also ``/metrics`` (which has a parameter of its
  own), the dashboard's files, and what is relayed as the upstream sent it (a server's
  ``text/event-stream; charset=utf-8`` through a node and the router, a ``text/plain``
  transcription, the dashboard's relay of ``/metrics``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key
from tests.support.text_fixtures import AUDIO_MODELS, UPSTREAM_KEY, backend

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class System:
    router: ThreadServer
    node: ThreadServer
    api_key: str


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    servers: list[ThreadServer] = []
    with backend("local", ["tiny-chat", *AUDIO_MODELS]) as up:
        try:
            router = start_router(
                Path(tmp_path_factory.mktemp("headers")) / "data", plugins=[EchoCapability()]
            )
            servers.append(router)
            servers.append(start_node(router.url, [EchoRuntimePlugin()], name="echo-node", runtimes=["echo"]))
            upstream = {"url": up.url, "api_key": UPSTREAM_KEY, "poll_interval_s": 0.3}
            servers.append(
                start_node(
                    router.url,
                    [],
                    name="oc-node",
                    runtimes=["openai_compatible"],
                    runtime_settings={"openai_compatible": upstream},
                )
            )
            yield System(router, servers[1], create_key(router.url, ["api"], name="client"))
        finally:
            for server in reversed(servers):
                server.stop()


def signed_in(client: httpx.Client) -> None:
    """Sign ``client`` in to the dashboard with the admin key, as the browser's form does."""
    form = client.get("/dashboard/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None
    answer = client.post("/dashboard/login", data={"csrf_token": token.group(1), "key": ADMIN_KEY})
    assert answer.status_code == 303, answer.text


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
            "dashboard relay, signed out": client.get("/dashboard/api/v0/status"),
            "image file": client.get("/v1/images/files/" + "a" * 43 + ".png"),
            "chat streamed through a node": client.post(
                "/v1/chat/completions",
                json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                headers=api,
            ),
            "transcription as text through a node": client.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")},
                data={"model": "whisper-tiny", "response_format": "text"},
                headers=api,
            ),
            **dashboard_answers(client),
        }


def dashboard_answers(client: httpx.Client) -> dict[str, httpx.Response]:
    signed_in(client)
    return {
        "dashboard relay of /metrics": client.get("/dashboard/api/metrics"),
        "dashboard relay of a node's stream": client.post(
            "/dashboard/api/v1/chat/completions",
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"x-csrf-token": csrf_of(client)},
        ),
    }


def csrf_of(client: httpx.Client) -> str:
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/dashboard").text)
    assert token is not None
    return token.group(1)


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


def test_every_answer_has_one_content_type_and_at_most_one_charset(system: System) -> None:
    answers = {**router_answers(system), **node_answers(system)}
    relayed = ("chat streamed through a node", "transcription as text through a node")
    for what in (*relayed, "dashboard relay of /metrics", "dashboard relay of a node's stream"):
        assert answers[what].status_code == 200, (what, answers[what].text)
    for what, response in answers.items():
        types = response.headers.get_list("content-type")
        assert len(types) == 1, (what, types)
        assert types[0].lower().count("charset") <= 1, (what, types[0])
    assert answers["metrics"].headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert (
        answers["dashboard relay of /metrics"].headers["content-type"]
        == answers["metrics"].headers["content-type"]
    )
    assert answers["dashboard script"].headers["content-type"] == "text/javascript; charset=utf-8"
    stream = answers["chat streamed through a node"].headers["content-type"]
    assert stream == "text/event-stream; charset=utf-8"  # the server's own, passed on as it was
    assert (
        answers["transcription as text through a node"].headers["content-type"] == "text/plain; charset=utf-8"
    )
