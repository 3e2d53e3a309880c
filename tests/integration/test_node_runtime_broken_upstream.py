"""The node's ``openai_compatible`` runtime in front of a local server that speaks broken HTTP
(``tests.support.raw_http``): its model list and its answers fail cleanly, as what they are
(garbage: ``bad_upstream_response``; a cut connection: ``upstream_unreachable``), never as a
500 with a traceback. The router then treats the node's 502 like any node failure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from llmlb_core.server.errors import exception_handlers
from llmlb_node.openai_compatible.runtime import OpenAICompatibleRuntime
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings
from tests.support.raw_http import RESET, RawAnswer, RawHttpServer, head, json_body

MODELS = RawAnswer([json_body({"object": "list", "data": [{"id": "m"}]})])
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[OpenAICompatibleRuntime, RawHttpServer]]:
    raw = RawHttpServer(answers={"/v1/models": MODELS}).start()
    made = OpenAICompatibleRuntime(OpenAICompatibleSettings(url=raw.url, poll_interval_s=60))
    try:
        await made.start()
        yield made, raw
    finally:
        await made.stop()
        raw.stop()


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (RawAnswer([b"HTTP/9.9 abc def\r\ncontent-length: 2\r\n\r\n{}"]), "bad_upstream_response"),
        (
            RawAnswer([head("200 OK", "content-length: 2", "content-length: 5") + b"{}"]),
            "bad_upstream_response",
        ),
        (RawAnswer([RESET]), "upstream_unreachable"),
    ],
    ids=["bad status line", "two content-length", "reset"],
)
async def test_a_broken_answer_of_the_local_server_is_a_502(
    runtime: tuple[OpenAICompatibleRuntime, RawHttpServer], answer: RawAnswer, code: str
) -> None:
    made, raw = runtime
    raw.answers["/v1/chat/completions"] = answer
    app = Litestar(route_handlers=made.routes(), exception_handlers=exception_handlers())
    # In this event loop: the runtime's upstream client belongs to it.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == code
    assert made.active == 0  # the slot is back


async def test_a_model_list_in_broken_http_is_an_error_that_says_so(
    runtime: tuple[OpenAICompatibleRuntime, RawHttpServer], caplog: pytest.LogCaptureFixture
) -> None:
    made, raw = runtime
    assert [m.id for m in made.models()] == ["m"]
    raw.answers["/v1/models"] = RawAnswer([b"HTTP/9.9 abc def\r\n\r\n"])
    caplog.set_level(logging.WARNING, logger="llmlb.node.openai_compatible")
    await made.refresh()
    [line] = [r.getMessage() for r in caplog.records if r.name == "llmlb.node.openai_compatible"]
    assert "cannot list models: GET /v1/models answered broken HTTP: Bad status line" in line, line
    assert [m.id for m in made.models()] == ["m"]  # the last known list stays advertised
