"""Wire messages between nodes and the router (registration, heartbeats).

Shared by ``llmlb_core`` (router side) and ``llmlb_node`` (node side, through
:mod:`llmlb_core.api`).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

# Node ids and names: a strict charset, so nothing a node sends can forge a log line or a header.
# (``\Z``, not ``$``: msgspec matches with ``re.search``, and ``$`` also matches before a final
# newline.)
NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
# The same, or ``endpoint:<name>`` (the ids the router gives admin-registered endpoints).
NODE_ID_PATTERN = r"^(endpoint:)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
NodeName = Annotated[str, msgspec.Meta(pattern=NODE_NAME_PATTERN)]
NodeId = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
# An http(s) URL as a node advertises it: printable ASCII, no spaces.
BaseUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[!-~]+\Z", max_length=2048)]
# Free text from an admin (key names, upstream keys): no control or line-breaking characters.
PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z"


class ModelAdvert(msgspec.Struct, kw_only=True):
    """A model a node can serve.

    ``capabilities`` may be empty for a model of an OpenAI-compatible server that nobody declared
    flags for: ``details["kind"]`` then names the server's kind, and the router gives the model
    the flags its capabilities declare (:class:`llmlb_core.openai_upstream.FlagRules`)."""

    id: NonEmpty
    capabilities: list[str]
    runtime: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    # What the operator says the model is (model.toml's ``description``): shown in /v1/models.
    description: str = ""


class Accelerator(msgspec.Struct, kw_only=True):
    kind: str  # "cpu", "cuda", "vulkan", "metal", ...
    name: str = ""
    memory_bytes: int | None = None


class NodeRegistration(msgspec.Struct, kw_only=True):
    node_id: NodeId
    name: NodeName
    base_url: BaseUrl
    # Credential the router must present on every inference request it sends to the node
    # (for a registered OpenAI-compatible endpoint: its upstream API key, possibly empty).
    token: str
    runtime_types: list[str]
    models: list[ModelAdvert]
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    accelerators: list[Accelerator] = msgspec.field(default_factory=list)
    version: str = ""
    # A node that re-registers while it drains (e.g. its router restarted) stays drained.
    draining: bool = False


Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
MAX_REPORTED_JOBS = 64


class JobProgress(msgspec.Struct, kw_only=True):
    """A running job as a node reports it in its heartbeat (shown in ``/v0/nodes``): on image
    ``image`` of ``images`` (1-based), at step ``step`` of ``steps``, running for ``elapsed_s``."""

    model: NonEmpty
    step: Count = 0
    steps: Count = 0
    image: Count = 1
    images: Count = 1
    elapsed_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Heartbeat(msgspec.Struct, kw_only=True):
    node_id: NodeId
    active_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0
    free_slots: Annotated[int, msgspec.Meta(ge=0)] = 0
    loaded_models: list[str] = msgspec.field(default_factory=list)
    queued_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Sent when the node's model list changed since registration.
    models: list[ModelAdvert] | None = None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    # Progress of the running jobs (at most MAX_REPORTED_JOBS).
    jobs: Annotated[list[JobProgress], msgspec.Meta(max_length=MAX_REPORTED_JOBS)] = msgspec.field(
        default_factory=list
    )


class RegistrationReply(msgspec.Struct, kw_only=True):
    node_id: str
    heartbeat_interval_s: float
    node_timeout_s: float


class HeartbeatReply(msgspec.Struct, kw_only=True):
    ok: bool
    # True when the router does not know this node (e.g. after a router restart).
    reregister: bool = False
