"""The plugin author's helpers of ``llmlb_core.api``: ``answer_type`` (a node's answer decoded
strictly into a type, or a BadAnswer) and ``json_route`` (a JSON route in a few lines, its
request and answer types in /docs)."""

from __future__ import annotations

import msgspec
import pytest
from litestar import Litestar, Response
from litestar.testing import TestClient

from llmlb_core.api import BadAnswer, answer_type, exception_handlers, json_route
from llmlb_core.server.openapi_docs import openapi_config


class Ask(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    n: int = 1


class Told(msgspec.Struct, kw_only=True):
    model: str
    n: int


def test_answer_type_decodes_strictly_or_raises_bad_answer() -> None:
    check = answer_type(Told)
    assert check(b'{"model": "m", "n": 2}') == Told(model="m", n=2)
    for content, says in [
        (b'{"model": "m", "n": "2"}', "Expected `int`, got `str` - at `$.n`"),  # strict: no "2"
        (b'{"model": "m"}', "missing required field `n`"),
        (b"[]", "Expected `object`"),
        (b'{"model": "\xff"}', "not UTF-8"),
        (b"[" * 500 + b"]" * 500, "nested too deep"),
    ]:
        with pytest.raises(BadAnswer, match="the answer is no Told") as caught:
            check(content)
        assert says in str(caught.value)


@json_route("/v1/told", Ask, Told)
async def told(ask: Ask) -> Told:
    """Tells the model back."""
    return Told(model=ask.model, n=ask.n)


@json_route("/v1/raw", Ask, status_code=201)
async def raw(ask: Ask, body: bytes) -> Response[bytes]:
    return Response(body + ask.model.encode(), media_type="text/plain")


@pytest.fixture(scope="module")
def client() -> TestClient[Litestar]:
    app = Litestar([told, raw], exception_handlers=exception_handlers(), openapi_config=openapi_config("t"))
    with TestClient(app) as client:
        yield client


def test_json_route_decodes_the_body_strictly_and_passes_the_raw_bytes(client: TestClient[Litestar]) -> None:
    assert client.post("/v1/told", json={"model": "m", "n": 3}).json() == {"model": "m", "n": 3}
    answer = client.post("/v1/raw", content=b'{"model": "m"}')
    assert (answer.status_code, answer.content) == (201, b'{"model": "m"}m')
    for body, param in [({"model": "m", "n": "3"}, "n"), ({"n": 3}, "model"), ({"model": "m", "x": 1}, "x")]:
        error = client.post("/v1/told", json=body)
        assert error.status_code == 400 and error.json()["error"]["param"] == param, error.text
    assert client.post("/v1/told", content=b"{not json").json()["error"]["code"] == "invalid_json"


def test_json_route_publishes_its_request_and_answer_types_in_the_docs(client: TestClient[Litestar]) -> None:
    paths = client.get("/docs/openapi.json").json()["paths"]
    operation = paths["/v1/told"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["required"] == ["model"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["title"] == "Told" and set(answer["properties"]) == {"model", "n"}
    assert operation["description"].startswith("Tells the model back")
    # Without an answer type the request body is still shown; the answer is Litestar's own.
    assert "requestBody" in paths["/v1/raw"]["post"] and "201" in paths["/v1/raw"]["post"]["responses"]
