"""``/docs`` works offline, under a strict policy, and shows real request bodies.

A router (built-in capabilities: text, audio, images) in-process on a loopback port. The page and
every file it references come from the router itself (no other host is named anywhere in the
page), with no key; the schema has a request body for every POST route that takes one, described
from the msgspec type the handler decodes with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb_plugins.images.protocol import MAX_N
from tests.support.inproc import start_router
from tests.support.servers import ThreadServer

# POST routes that act on the resource in their path and take no body.
BODYLESS_POSTS = {
    "/v0/nodes/{node_id}/drain",
    "/v0/nodes/{node_id}/resume",
    "/v0/nodes/{node_id}/deregister",
    "/v0/endpoints/{name}/check",
}
BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


class Elements(HTMLParser):
    """Every element of the page and its attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, set[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name for name, _ in attrs}))


class References(HTMLParser):
    """Every URL an element of the page refers to (src, href, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [(tag, value) for name, value in attrs if name in ("src", "href", "action") and value]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    server = start_router(Path(tmp_path_factory.mktemp("docs")) / "data")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spec(router: ThreadServer) -> dict[str, Any]:
    response = httpx.get(f"{router.url}/docs/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def body_schema(spec: dict[str, Any], path: str, media_type: str) -> dict[str, Any]:
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert list(body["content"]) == [media_type]
    return body["content"][media_type]["schema"]  # type: ignore[no-any-return]


def test_the_docs_page_loads_every_file_from_the_router_itself(router: ThreadServer) -> None:
    page = httpx.get(f"{router.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", page.text), "the page names another host"
    parser = References()
    parser.feed(page.text)
    kinds = {tag for tag, _ in parser.urls}
    assert {"script", "link"} <= kinds
    for tag, url in parser.urls:
        assert url.startswith("/docs/assets/"), (tag, url)
        asset = httpx.get(f"{router.url}{url}")
        assert asset.status_code == 200, url
        assert len(asset.content) > 300 and "max-age" in asset.headers["cache-control"]
        expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}[Path(url).suffix]
        assert asset.headers["content-type"].split(";")[0] == expected
    script = httpx.get(f"{router.url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in script
    setup = httpx.get(f"{router.url}/docs/assets/llmlb-docs.js").text
    assert "SwaggerUIBundle(" in setup and 'url: "/docs/openapi.json"' in setup
    assert "validatorUrl: null" in setup  # no request to swagger.io's online validator
    # The Swagger UI page is also at /docs/swagger; the schema as YAML too.
    assert httpx.get(f"{router.url}/docs/swagger").text == page.text
    assert "\nopenapi: 3.1.0\n" in httpx.get(f"{router.url}/docs/openapi.yaml").text


def test_the_docs_run_no_inline_script_and_cannot_be_framed(router: ThreadServer) -> None:
    """The page's policy allows scripts from the router only, so it has none inline; every answer
    under /docs says so and refuses to be framed (the browser check: tests/browser)."""
    page = httpx.get(f"{router.url}/docs")
    parser = Elements()
    parser.feed(page.text)
    assert "script" in {tag for tag, _ in parser.elements}
    inline = [
        (tag, attrs)
        for tag, attrs in parser.elements
        if tag == "style" or (tag == "script" and "src" not in attrs)
    ]
    assert inline == [] and not [
        attrs for _, attrs in parser.elements if any(a.startswith("on") for a in attrs)
    ]
    for path in ("/docs", "/docs/swagger", "/docs/openapi.json", "/docs/assets/swagger-ui.css", "/docs/nope"):
        answer = httpx.get(f"{router.url}{path}")
        policy = [part.strip() for part in answer.headers["content-security-policy"].split(";")]
        assert {"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} <= set(policy), path
        assert not [p for p in policy if "unsafe" in p], path
        assert answer.headers["x-frame-options"] == "DENY", path
    assert httpx.get(f"{router.url}/docs/oauth2-redirect.html").status_code == 404  # inline script


def test_only_the_pages_files_are_served_and_others_are_openai_shaped_404s(router: ThreadServer) -> None:
    for name in ("index.j2", "swagger-ui.js.map", "..%2Fpyproject.toml", "nope.js"):
        response = httpx.get(f"{router.url}/docs/assets/{name}")
        assert response.status_code == 404, name
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_every_post_route_shows_its_request_body(spec: dict[str, Any]) -> None:
    posts = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert {"/v1/chat/completions", "/v1/images/edits", "/v1/audio/transcriptions", "/v0/keys"} <= set(posts)
    missing = sorted(
        p for p, op in posts.items() if op.get("requestBody") is None and p not in BODYLESS_POSTS
    )
    assert missing == []
    assert all(posts[p].get("requestBody") is None for p in BODYLESS_POSTS)
    # Bodies stand alone: no reference into a $defs that the OpenAPI document does not have.
    assert "#/$defs/" not in str(spec)


def test_json_bodies_are_the_msgspec_types_the_handlers_decode(spec: dict[str, Any]) -> None:
    generations = body_schema(spec, "/v1/images/generations", "application/json")
    assert "prompt" in generations["required"]
    assert generations["properties"]["n"] == {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1}
    lora = generations["properties"]["loras"]["anyOf"][0]["items"]  # inlined from LoraRef
    assert lora["required"] == ["name"] and lora["additionalProperties"] is False
    chat = body_schema(spec, "/v1/chat/completions", "application/json")
    assert {"model", "messages"} <= set(chat["required"])
    keys = body_schema(spec, "/v0/keys", "application/json")
    assert keys["required"] == ["name"] and keys["additionalProperties"] is False
    register = body_schema(spec, "/v0/nodes/register", "application/json")
    assert "models" in register["required"] and register["properties"]["models"]["type"] == "array"


def test_multipart_bodies_show_their_fields_and_file_parts(spec: dict[str, Any]) -> None:
    edits = body_schema(spec, "/v1/images/edits", "multipart/form-data")
    props = edits["properties"]
    assert {k: v for k, v in props["image"].items() if k != "description"} == BINARY
    assert props["image[]"]["type"] == "array" and props["image[]"]["items"] == BINARY
    assert props["mask"]["format"] == "binary"
    assert "prompt" in edits["required"] and "strength" in props
    variations = body_schema(spec, "/v1/images/variations", "multipart/form-data")
    assert variations["required"] == ["image"] and "prompt" not in variations["properties"]
    transcriptions = body_schema(spec, "/v1/audio/transcriptions", "multipart/form-data")
    assert transcriptions["required"] == ["file", "model"]
    assert transcriptions["properties"]["file"]["format"] == "binary"
    assert "language" in transcriptions["properties"]


def test_the_docs_say_how_to_authorize(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["api_key"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An llmlb API key",
    }
    assert spec["security"] == [{"api_key": []}]
    assert "Authorization: Bearer" in spec["info"]["description"]
