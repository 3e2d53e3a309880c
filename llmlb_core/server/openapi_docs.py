"""The router's API docs: Swagger UI at ``/docs``, served offline, with real request bodies.

- **Offline.** Swagger UI's script, style sheet and icon come from the ``swagger-ui-bundle-v2``
  package (PyPI) and are served by the router itself under ``/docs/assets/``: the page names no
  other host, so the docs work on a machine without internet access. ``/docs/openapi.json``
  and ``/docs/openapi.yaml`` are the schema itself.
- **A strict policy.** The page has no inline script or style: it loads Swagger UI and the
  router's own start-up script (:data:`SETUP_SCRIPT`, which fetches ``/docs/openapi.json``) from
  ``/docs/assets/``. So every answer under ``/docs`` carries :data:`DOCS_HEADERS`: a
  Content-Security-Policy that lets the page run scripts and fetch from the router only, and
  never be framed (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).
- **Request bodies and answers.** Handlers read their bodies themselves (msgspec, strict,
  OpenAI-shaped errors), so Litestar cannot see what they take. A handler says it with its
  ``operation_class``: :func:`openapi_json_body` for a JSON body, :func:`openapi_form_body` for
  a ``multipart/form-data`` one (plain fields from a struct, plus the file parts);
  ``openapi_json_body(Type, answer=Answer)`` also shows the JSON a handler answers. The schema
  is msgspec's own JSON Schema of the type the handler decodes with, so the docs show exactly
  what is accepted (bounds, enums, unknown fields refused). It is built once, when the docs are
  first asked for: nothing is added to a request's path.
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response, Router, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, Operation, SecurityScheme
from litestar.params import FromPath
from swagger_ui_bundle import swagger_ui_path

from llmlb_core.server.errors import OpenAIError

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"
# The router's own start-up script for Swagger UI, served as an asset (no inline script).
SETUP_SCRIPT_NAME = "llmlb-docs.js"
# The files the page loads, and their media types: nothing else under the package is served.
ASSETS: Mapping[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    SETUP_SCRIPT_NAME: "text/javascript",
}
ASSET_MAX_AGE_S = 24 * 3600
SETUP_SCRIPT = f"""// Swagger UI for llmlb: the schema from the router itself, no online validator.
window.ui = SwaggerUIBundle({{
  url: "{DOCS_PATH}/openapi.json",
  dom_id: "#swagger-container",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  validatorUrl: null,
}});
""".encode()
# Scripts, styles and fetches from the router only; Swagger UI's icons are data: URLs (its own
# element styles are set from script, which the policy allows).
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
DOCS_HEADERS = {"content-security-policy": DOCS_POLICY, "x-frame-options": "DENY"}

API_DESCRIPTION = (
    "OpenAI-compatible routes (`/v1/...`), admin routes (`/v0/...`, admin key) and the routes nodes "
    "call (`/v0/nodes/...`, node key). Send the key as `Authorization: Bearer KEY` (or `x-api-key`): "
    "press **Authorize** to try a route from this page."
)


# --- request bodies --------------------------------------------------------------------------
def _inline(node: Any, defs: Mapping[str, Any], expanding: tuple[str, ...] = ()) -> Any:
    """``node`` with msgspec's ``{"$ref": "#/$defs/Name"}`` replaced by the definitions: a body
    schema stands alone in an operation (``#`` is the OpenAPI document there, not the schema)."""
    if isinstance(node, list):
        return [_inline(item, defs, expanding) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in expanding:  # a recursive type: name it instead of expanding it forever
            return {"type": "object", "title": name}
        return _inline(defs[name], defs, (*expanding, name))
    return {key: _inline(value, defs, expanding) for key, value in node.items() if key != "$defs"}


def json_schema(body: type[Any]) -> dict[str, Any]:
    """msgspec's JSON Schema of ``body``, self-contained (each operation keeps its own)."""
    schema = msgspec.json.schema(body)
    return _inline(schema, schema.get("$defs", {}))  # type: ignore[no-any-return]


class _BodyOperation(Operation):
    """An operation whose request body (and, when given, JSON answer) is described from the
    types its handler decodes and answers."""

    media_type: ClassVar[str]
    body_schema: ClassVar[Callable[[], dict[str, Any]]]
    answer_schema: ClassVar[Callable[[], dict[str, Any]] | None] = None

    def to_schema(self) -> dict[str, Any]:
        out = super().to_schema()
        schema = type(self).body_schema()
        out["requestBody"] = {"required": True, "content": {self.media_type: {"schema": schema}}}
        answer = type(self).answer_schema
        if answer is not None:
            responses = out.setdefault("responses", {})
            success = [code for code in responses if str(code).startswith("2")] or ["200"]
            for code in success:
                described = responses.get(code) or {}
                responses[code] = {
                    "description": described.get("description") or "Request fulfilled",
                    "content": {"application/json": {"schema": answer()}},
                }
        return out


def _operation(
    name: str,
    media_type: str,
    schema: Callable[[], dict[str, Any]],
    answer: Callable[[], dict[str, Any]] | None = None,
) -> type[Operation]:
    attrs = {
        "media_type": media_type,
        "body_schema": staticmethod(functools.cache(schema)),
        "answer_schema": staticmethod(functools.cache(answer)) if answer is not None else None,
    }
    return type(name, (_BodyOperation,), attrs)


def openapi_json_body(body: type[Any], *, answer: type[Any] | None = None) -> type[Operation]:
    """A route handler's ``operation_class`` for a handler that decodes a JSON body into
    ``body`` (a msgspec struct): the docs show its schema as the request body, and ``answer``'s
    (when given) as the JSON of its successful answer (a handler that returns a ``Response``
    of bytes shows Litestar nothing of it).

    ``@post("/v1/things", operation_class=openapi_json_body(ThingRequest, answer=Thing))``"""
    answer_schema = (lambda: json_schema(answer)) if answer is not None else None
    return _operation(
        f"{body.__name__}Operation", "application/json", lambda: json_schema(body), answer_schema
    )


def _file_part(description: str, many: bool) -> dict[str, Any]:
    one = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    if many:
        return {"type": "array", "items": one, "description": description}
    return {**one, "description": description}


def openapi_form_body(
    fields: type[Any], files: Mapping[str, str], *, required_files: Sequence[str] = ()
) -> type[Operation]:
    """A route handler's ``operation_class`` for a ``multipart/form-data`` body: the plain fields
    of ``fields`` (a msgspec struct, as ``convert_fields`` reads them) plus the file parts
    ``files`` (name -> description; a name ending in ``[]`` takes several files)."""

    def schema() -> dict[str, Any]:
        plain = json_schema(fields)
        properties = {name: _file_part(text, name.endswith("[]")) for name, text in files.items()}
        properties.update(plain.get("properties", {}))
        form: dict[str, Any] = {"type": "object", "properties": properties}
        required = [*required_files, *plain.get("required", [])]
        if required:
            form["required"] = required
        return form

    return _operation(f"{fields.__name__}FormOperation", "multipart/form-data", schema)


# --- the docs site -----------------------------------------------------------------------------
@functools.cache
def _asset(name: str) -> bytes:
    if name == SETUP_SCRIPT_NAME:
        return SETUP_SCRIPT
    return Path(swagger_ui_path, name).read_bytes()


@get("/assets/{name:str}", include_in_schema=False, sync_to_thread=False)
def docs_asset(name: FromPath[str]) -> Response[bytes]:
    """One of the page's files: Swagger UI's, from the installed package, or the set-up script
    (read once, kept in memory)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise OpenAIError(404, f"No docs asset named '{name}'", param="name")
    return Response(
        _asset(name), media_type=media_type, headers={"cache-control": f"public, max-age={ASSET_MAX_AGE_S}"}
    )


class OfflineSwaggerUI(SwaggerRenderPlugin):
    """A Swagger UI page whose files are all served by the router (no CDN) and that has no inline
    script or style (the docs' policy allows neither)."""

    def __init__(self) -> None:
        super().__init__(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            path=["/", "/swagger"],
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        return (
            "<!DOCTYPE html><html lang='en'><head>"
            f"<title>{title}</title>{self.favicon}<meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link href='{self.css_url}' rel='stylesheet'>"
            f"<script src='{self.js_url}'></script><script src='{self.standalone_preset_js_url}'></script>"
            "</head><body><div id='swagger-container'></div>"
            f"<script src='{ASSETS_PATH}/{SETUP_SCRIPT_NAME}'></script></body></html>"
        ).encode()

    def receive_router(self, router: Router) -> None:
        # Not Swagger UI's OAuth2 redirect page (inline script; the API takes bearer keys only).
        router.register(docs_asset)


def openapi_config(title: str) -> OpenAPIConfig:
    """``/docs`` (Swagger UI), ``/docs/openapi.json`` and ``/docs/openapi.yaml``, every answer
    with :data:`DOCS_HEADERS`; a bearer key scheme so that **Authorize** works."""
    return OpenAPIConfig(
        title=title,
        version=importlib.metadata.version("llmlb"),
        description=API_DESCRIPTION,
        path=DOCS_PATH,
        openapi_router=Router(
            DOCS_PATH, route_handlers=[], include_in_schema=False, response_headers=DOCS_HEADERS
        ),
        render_plugins=[OfflineSwaggerUI(), JsonRenderPlugin(), YamlRenderPlugin()],
        components=Components(
            security_schemes={
                "api_key": SecurityScheme(type="http", scheme="bearer", description="An llmlb API key")
            }
        ),
        security=[{"api_key": []}],
        use_handler_docstrings=True,
    )
