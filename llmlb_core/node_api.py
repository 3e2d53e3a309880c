"""Routes nodes call: register, heartbeat, drain, deregister (``node`` scope)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.params import FromPath

from llmlb_core.auth import require_scope
from llmlb_core.bodies import decode_json
from llmlb_core.endpoints import NODE_ID_PREFIX as ENDPOINT_ID_PREFIX
from llmlb_core.errors import OpenAIError
from llmlb_core.protocol import Heartbeat, HeartbeatReply, NodeRegistration, RegistrationReply
from llmlb_core.services import get_services

# Nodes are told to beat several times per timeout window.
HEARTBEATS_PER_TIMEOUT = 4


@post("/register", status_code=200)
async def register_node(request: Request[Any, Any, Any]) -> RegistrationReply:
    services = get_services(request)
    reg = await decode_json(request, NodeRegistration)
    if reg.node_id.startswith(ENDPOINT_ID_PREFIX):
        raise OpenAIError(
            400,
            f"node ids starting with '{ENDPOINT_ID_PREFIX}' are reserved for registered endpoints",
            param="node_id",
        )
    services.nodes.register(reg)
    timeout = services.settings.node_timeout_s
    return RegistrationReply(
        node_id=reg.node_id,
        heartbeat_interval_s=min(10.0, timeout / HEARTBEATS_PER_TIMEOUT),
        node_timeout_s=timeout,
    )


@post("/heartbeat", status_code=200)
async def heartbeat(request: Request[Any, Any, Any]) -> HeartbeatReply:
    services = get_services(request)
    hb = await decode_json(request, Heartbeat)
    known = services.nodes.heartbeat(hb)
    return HeartbeatReply(ok=known, reregister=not known)


@post("/{node_id:str}/drain", status_code=200)
async def drain_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    if not get_services(request).nodes.set_draining(node_id):
        raise OpenAIError(404, f"Unknown node '{node_id}'", param="node_id")
    return {"id": node_id, "draining": True}


@post("/{node_id:str}/deregister", status_code=200)
async def deregister_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    if not get_services(request).nodes.deregister(node_id):
        raise OpenAIError(404, f"Unknown node '{node_id}'", param="node_id")
    return {"id": node_id, "deregistered": True}


node_router = Router(
    path="/v0/nodes",
    route_handlers=[register_node, heartbeat, drain_node, deregister_node],
    guards=[require_scope("node")],
)
