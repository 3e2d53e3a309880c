"""Routes nodes call: register, heartbeat, drain, resume, deregister (``node`` scope).

Who may act on a node id (anyone else gets an OpenAI-shaped 403 and the entry is unchanged):

- ``endpoint:*`` ids are the router's admin-registered endpoints: admin keys only.
- A key bound to a node id (``POST /v0/keys`` with ``node_id``) acts on that id only.
- A node id belongs to the key that first registered it: only that key or an admin key may
  re-register, heartbeat, drain, resume or deregister it. An admin frees an id with
  ``DELETE /v0/nodes/{id}`` (:mod:`llmlb_core.router.admin_routes`).

The models a node advertises get their flags here, as the router sees them: aliases expanded, and
a model of an OpenAI-compatible server that nobody declared flags for (an ``openai_compatible``
runtime advertises it with none) gets what the enabled capabilities give it
(:class:`~llmlb_core.router.flag_rules.FlagRules`).
"""

from __future__ import annotations

from typing import Any, Literal

from litestar import Request, Router, post
from litestar.params import FromPath

from llmlb_core.protocol import Heartbeat, HeartbeatReply, NodeRegistration, RegistrationReply
from llmlb_core.router.advert_limits import AdvertLimits
from llmlb_core.router.auth import request_key, require_scope
from llmlb_core.router.flag_rules import FlagRules
from llmlb_core.router.nodes import ENDPOINT_ID_PREFIX, NodeRegistry
from llmlb_core.router.state import RouterState
from llmlb_core.server.bodies import decode_json_bytes
from llmlb_core.server.errors import OpenAIError
from llmlb_core.server.openapi_docs import openapi_json_body
from llmlb_core.server.tls import require_https
from llmlb_core.storage.interfaces import KeyRow

# Nodes are told to beat several times per timeout window.
HEARTBEATS_PER_TIMEOUT = 4

Action = Literal["register", "heartbeat", "drain", "resume", "deregister"]


def _forbidden(message: str, code: str) -> OpenAIError:
    return OpenAIError(403, message, param="node_id", code=code)


def authorize(nodes: NodeRegistry, key: KeyRow, node_id: str, action: Action) -> None:
    """Raise a 403 unless ``key`` may ``action`` the node ``node_id``."""
    admin = "admin" in key.scopes
    if node_id.startswith(ENDPOINT_ID_PREFIX):
        if not admin:
            raise _forbidden(
                f"'{node_id}' is a registered endpoint: only an admin key may {action} it",
                "endpoint_admin_only",
            )
        return
    if admin:
        return
    if key.node_id is not None and key.node_id != node_id:
        raise _forbidden(f"This key is bound to node '{key.node_id}'", "key_bound_to_other_node")
    owner = nodes.owner_of(node_id)
    if owner == key.id:
        return
    if owner is None:
        # Unknown (a register claims it; the others answer 404 / "re-register"), or a record
        # from before ids had owners: only its re-registration may claim it.
        if action in ("register", "heartbeat") or nodes.get(node_id) is None:
            return
        raise _forbidden(
            f"Node '{node_id}' has no owner yet; only an admin key may {action} it", "not_node_owner"
        )
    if action == "register":
        raise _forbidden(
            f"The node id '{node_id}' belongs to another key. Choose another id, or ask an admin to"
            f" release it (DELETE /v0/nodes/{node_id}).",
            "node_id_taken",
        )
    raise _forbidden(f"Node '{node_id}' belongs to another key", "not_node_owner")


async def _advert_body(request: Request[Any, Any, Any], limits: AdvertLimits) -> bytes:
    """The body of a registration or heartbeat, refused (413) over ``max_advert_bytes``."""
    body = await request.body()
    limits.check_body(body)
    return body


def _act(nodes: NodeRegistry, request: Request[Any, Any, Any], node_id: str, action: Action) -> NodeRegistry:
    authorize(nodes, request_key(request), node_id, action)
    if nodes.get(node_id) is None:
        raise OpenAIError(404, f"Unknown node '{node_id}'", param="node_id", code="node_not_found")
    return nodes


def node_router(state: RouterState) -> Router:
    """Registration, heartbeats and node actions under ``/v0/nodes`` (``node`` scope)."""
    limits = AdvertLimits.of(state.settings)
    flag_rules = FlagRules(state.plugins)

    @post("/register", status_code=200, operation_class=openapi_json_body(NodeRegistration))
    async def register_node(request: Request[Any, Any, Any]) -> RegistrationReply:
        reg = decode_json_bytes(await _advert_body(request, limits), NodeRegistration)
        if reg.node_id.startswith(ENDPOINT_ID_PREFIX):
            raise OpenAIError(
                400,
                f"node ids starting with '{ENDPOINT_ID_PREFIX}' are reserved for registered endpoints",
                param="node_id",
            )
        key = request_key(request)
        authorize(state.nodes, key, reg.node_id, "register")
        limits.check(reg.models)
        require_https(reg.base_url, state.settings.require_node_tls)
        reg.models = flag_rules.adverts(reg.models)
        state.nodes.register(reg, owner_key_id=key.id)
        timeout = state.settings.node_timeout_s
        return RegistrationReply(
            node_id=reg.node_id,
            heartbeat_interval_s=min(10.0, timeout / HEARTBEATS_PER_TIMEOUT),
            node_timeout_s=timeout,
        )

    @post("/heartbeat", status_code=200, operation_class=openapi_json_body(Heartbeat))
    async def heartbeat(request: Request[Any, Any, Any]) -> HeartbeatReply:
        hb = decode_json_bytes(await _advert_body(request, limits), Heartbeat)
        authorize(state.nodes, request_key(request), hb.node_id, "heartbeat")
        if hb.models is not None:
            limits.check(hb.models)
            hb.models = flag_rules.adverts(hb.models)
        known = state.nodes.heartbeat(hb)
        return HeartbeatReply(ok=known, reregister=not known)

    @post("/{node_id:str}/drain", status_code=200)
    async def drain_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
        _act(state.nodes, request, node_id, "drain").set_draining(node_id, True)
        return {"id": node_id, "draining": True}

    @post("/{node_id:str}/resume", status_code=200)
    async def resume_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
        _act(state.nodes, request, node_id, "resume").set_draining(node_id, False)
        return {"id": node_id, "draining": False}

    @post("/{node_id:str}/deregister", status_code=200)
    async def deregister_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
        _act(state.nodes, request, node_id, "deregister").deregister(node_id)
        return {"id": node_id, "deregistered": True}

    return Router(
        path="/v0/nodes",
        route_handlers=[register_node, heartbeat, drain_node, resume_node, deregister_node],
        guards=[require_scope("node", state.keys)],
    )
