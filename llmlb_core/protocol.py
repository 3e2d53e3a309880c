"""Wire messages between nodes and the router (registration, heartbeats).

Shared by ``llmlb_core`` (router side) and ``node_runtimes`` (node side).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ModelAdvert(msgspec.Struct, kw_only=True):
    """A model a node can serve."""

    id: NonEmpty
    capabilities: list[str]
    runtime: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Accelerator(msgspec.Struct, kw_only=True):
    kind: str  # "cpu", "cuda", "vulkan", "metal", ...
    name: str = ""
    memory_bytes: int | None = None


class NodeRegistration(msgspec.Struct, kw_only=True):
    node_id: NonEmpty
    name: NonEmpty
    base_url: NonEmpty
    # Credential the router must present on every inference request it sends to the node
    # (for a registered OpenAI-compatible endpoint: its upstream API key, possibly empty).
    token: str
    runtime_types: list[str]
    models: list[ModelAdvert]
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    accelerators: list[Accelerator] = msgspec.field(default_factory=list)
    version: str = ""


class Heartbeat(msgspec.Struct, kw_only=True):
    node_id: NonEmpty
    active_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0
    free_slots: Annotated[int, msgspec.Meta(ge=0)] = 0
    loaded_models: list[str] = msgspec.field(default_factory=list)
    queued_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Sent when the node's model list changed since registration.
    models: list[ModelAdvert] | None = None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None


class RegistrationReply(msgspec.Struct, kw_only=True):
    node_id: str
    heartbeat_interval_s: float
    node_timeout_s: float


class HeartbeatReply(msgspec.Struct, kw_only=True):
    ok: bool
    # True when the router does not know this node (e.g. after a router restart).
    reregister: bool = False
