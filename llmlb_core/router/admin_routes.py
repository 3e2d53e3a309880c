"""Admin API under ``/v0`` (``admin`` scope): keys, nodes, models, schemas."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, delete, get, patch, post
from litestar.params import FromPath

from llmlb_core.protocol import PLAIN_TEXT_PATTERN, Description, ModelId, NodeName, Token
from llmlb_core.router.auth import ApiKeyInfo, require_scope
from llmlb_core.router.models import ModelList
from llmlb_core.router.nodes import ENDPOINT_ID_PREFIX, NodeView
from llmlb_core.router.state import RouterState
from llmlb_core.server.access_log import QUIET_LOG_OPT
from llmlb_core.server.bodies import decode_json
from llmlb_core.server.errors import OpenAIError, from_msgspec_error
from llmlb_core.server.openapi_docs import openapi_json_body


class CreateKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=PLAIN_TEXT_PATTERN)]
    scopes: list[str] = msgspec.field(default_factory=lambda: ["api"])
    # Either an absolute expiry (unix seconds, in the future) or a lifetime in seconds.
    expires_at: float | None = None
    expires_in_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # A `node` key bound to this node id: it may register and act on that node only.
    node_id: NodeName | None = None
    # The models an `api` key may use (others: 403 model_not_allowed); unset: every model.
    models: list[str] | None = None


class UpdateKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The models the key may use from now on; null: every model.
    models: list[str] | None


class CreatedKey(msgspec.Struct, kw_only=True):
    key: str  # shown once
    info: ApiKeyInfo


class RegisterModelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: ModelId
    capabilities: list[Token]
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    description: Description = ""


def admin_router(state: RouterState) -> Router:
    """The admin API under ``/v0`` (``admin`` scope), closed over the router's objects."""

    @post("/keys", status_code=201, operation_class=openapi_json_body(CreateKeyRequest))
    async def create_key(request: Request[Any, Any, Any]) -> CreatedKey:
        body = await decode_json(request, CreateKeyRequest)
        expires_at = body.expires_at
        if body.expires_in_s is not None:
            if expires_at is not None:
                raise OpenAIError(400, "give expires_at or expires_in_s, not both", param="expires_in_s")
            expires_at = time.time() + body.expires_in_s
        key, info = state.keys.create(
            body.name, body.scopes, expires_at=expires_at, node_id=body.node_id, models=body.models
        )
        return CreatedKey(key=key, info=info)

    @patch("/keys/{key_id:str}", operation_class=openapi_json_body(UpdateKeyRequest))
    async def update_key(key_id: FromPath[str], request: Request[Any, Any, Any]) -> ApiKeyInfo:
        body = await decode_json(request, UpdateKeyRequest)
        return state.keys.set_models(key_id, body.models)

    @get("/keys")
    async def list_keys() -> dict[str, Any]:
        return {"object": "list", "data": state.keys.list()}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(key_id: FromPath[str]) -> dict[str, Any]:
        if not state.keys.revoke(key_id):
            raise OpenAIError(404, f"No active API key with id '{key_id}'", param="key_id")
        return {"id": key_id, "revoked": True}

    @get("/nodes")
    async def list_nodes() -> dict[str, Any]:
        views: list[NodeView] = [state.nodes.view(n) for n in state.nodes.all()]
        return {"object": "list", "data": views, "queue_depth": state.balancer.queue_depth}

    @delete("/nodes/{node_id:str}", status_code=200)
    async def release_node(node_id: FromPath[str]) -> dict[str, Any]:
        """Deregister a node and forget its owner: any node key may claim the id next."""
        if node_id.startswith(ENDPOINT_ID_PREFIX):
            raise OpenAIError(
                400,
                f"'{node_id}' is a registered endpoint; delete it with DELETE /v0/endpoints/{{name}}",
                param="node_id",
            )
        if not state.nodes.release(node_id):
            raise OpenAIError(404, f"Unknown node '{node_id}'", param="node_id", code="node_not_found")
        return {"id": node_id, "released": True}

    @get("/models")
    async def list_all_models() -> ModelList:
        """Every model the router knows, served now or not, with where it runs (`nodes`) and its
        `status`: registered by an admin, advertised by a listed node (online, draining or offline),
        or by a node that left in the last day."""
        return ModelList(data=state.models.entries(state.enabled_flags))

    @post("/models", status_code=201, operation_class=openapi_json_body(RegisterModelRequest))
    async def register_model(request: Request[Any, Any, Any]) -> dict[str, Any]:
        body = await decode_json(request, RegisterModelRequest)
        known_flags = state.plugins.known_flags
        unknown = sorted(set(body.capabilities) - known_flags)
        if unknown or not body.capabilities:
            raise OpenAIError(
                400,
                f"capabilities must be a non-empty subset of {sorted(known_flags)}; unknown: {unknown}",
                param="capabilities",
            )
        for cap in state.plugins.capabilities.values():
            # Defaults are checked when given, against each capability that serves the model.
            schema = cap.defaults_schema
            if schema is None or not cap.model_flags.intersection(body.capabilities):
                continue
            try:
                msgspec.convert(body.defaults, schema)
            except msgspec.ValidationError as exc:
                key = from_msgspec_error(exc).param
                raise OpenAIError(
                    400,
                    f"Invalid defaults for capability '{cap.name}': {exc}",
                    param=f"defaults.{key}" if key else "defaults",
                    code="invalid_model_defaults",
                ) from None
        row = state.models.register(body.id, body.capabilities, body.defaults, body.description)
        return msgspec.to_builtins(row)  # type: ignore[no-any-return]

    @delete("/models/{model_id:path}", status_code=200)
    async def delete_model(model_id: FromPath[str]) -> dict[str, Any]:
        model_id = model_id.lstrip("/")
        if not state.models.delete(model_id):
            raise OpenAIError(404, f"The model '{model_id}' is not registered", param="model_id")
        return {"id": model_id, "deleted": True}

    @get("/schemas")
    async def schemas() -> dict[str, Any]:
        return state.plugins.json_schemas()

    @get("/capabilities")
    async def capabilities() -> dict[str, Any]:
        plugins = state.plugins
        return {
            "data": [
                {
                    "name": name,
                    "model_flags": sorted(cap.model_flags),
                    "description": cap.description,
                    "schemas": sorted(cap.schemas),
                    "defaults_schema": cap.defaults_schema.__name__ if cap.defaults_schema else None,
                    "enabled": name in plugins.enabled,
                }
                for name, cap in sorted(plugins.capabilities.items())
            ]
        }

    router = Router(
        path="/v0",
        route_handlers=[
            create_key,
            list_keys,
            update_key,
            revoke_key,
            list_nodes,
            release_node,
            list_all_models,
            register_model,
            delete_model,
            schemas,
            capabilities,
        ],
        guards=[require_scope("admin", state.keys)],
    )

    @get("/status", opt={QUIET_LOG_OPT: True})
    async def status() -> dict[str, Any]:
        """What a live view polls, in one answer (the dashboard asks every 1.5 s, so a successful
        call is logged at DEBUG): the nodes as ``/v0/nodes`` shows them, the endpoints as
        ``/v0/endpoints``, the models as ``/v0/models``, and the wait queue's depth."""
        return {
            "object": "status",
            "queue_depth": state.balancer.queue_depth,
            "nodes": [state.nodes.view(n) for n in state.nodes.all()],
            "endpoints": [state.endpoints.view(name) for name in state.endpoints.names()],
            "models": state.models.entries(state.enabled_flags),
        }

    router.register(status)
    return router
