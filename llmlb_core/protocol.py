"""What crosses between a node and the router: registration and heartbeat messages, the rules
for what a node may name (ids, model ids, tokens), and the headers a node's answer reports its
work in (:func:`report_generation`, read back by :func:`note_node_report`).

Shared by the router (:mod:`llmlb_core.router`) and the node (``llmlb_node``), which imports
nothing else of the router.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from llmlb_core.server.access_log import note_request

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
# Model ids, as nodes, endpoints and admins name them: what OpenAI-compatible servers use
# (``org/name``, ``name:tag``, ``ft:base:org::id``, a file path), and no character that could
# forge a log line, split a header or reach a page as markup (no spaces, quotes, brackets or
# control characters).
MODEL_ID_PATTERN = r"^[A-Za-z0-9._:/@+=~-]{1,256}\Z"
ModelId = Annotated[str, msgspec.Meta(pattern=MODEL_ID_PATTERN)]
# Names a node gives things the router keys or shows (capability flags, runtime types,
# accelerator kinds): short tokens.
TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z"
Token = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN)]
# Printable text a node describes something with (a model's description, an accelerator's name):
# no control or line-breaking characters, bounded.
MAX_DESCRIPTION_CHARS = 1000
Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS, pattern=PLAIN_TEXT_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(max_length=200, pattern=PLAIN_TEXT_PATTERN)]
# The router's credential for a node: sent in a header on every request, so header-safe.
NodeToken = Annotated[str, msgspec.Meta(max_length=4096, pattern=r"^[ -~]*\Z")]
# Most entries in a node's lists the router keeps whatever its settings (the models a node may
# advertise are bounded lower by the router's ``max_models_per_node``).
MAX_LISTED = 100_000
MAX_TOKENS = 64


MODEL_ID_RULE = "1-256 characters from A-Z a-z 0-9 and . _ : / @ + = ~ -"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)


def valid_model_id(model_id: str) -> bool:
    """Whether ``model_id`` is one the router accepts (:data:`MODEL_ID_PATTERN`)."""
    return _MODEL_ID.match(model_id) is not None


def plain_description(text: str) -> str:
    """A description as an advert carries it (:data:`Description`): one line (each run of
    whitespace, line breaks included, one space; other unprintable characters dropped), at most
    :data:`MAX_DESCRIPTION_CHARS`."""
    if text.isprintable() and len(text) <= MAX_DESCRIPTION_CHARS and "  " not in text:
        return text.strip()
    head = text[: MAX_DESCRIPTION_CHARS * 4]
    kept = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in head)
    return " ".join(kept.split())[:MAX_DESCRIPTION_CHARS]


class ModelAdvert(msgspec.Struct, kw_only=True):
    """A model a node can serve.

    ``capabilities`` may be empty for a model of an OpenAI-compatible server that nobody declared
    flags for: ``details["kind"]`` then names the server's kind, and the router gives the model
    the flags its capabilities declare (:class:`llmlb_core.router.flag_rules.FlagRules`)."""

    id: ModelId
    capabilities: Annotated[list[Token], msgspec.Meta(max_length=MAX_TOKENS)]
    runtime: Token
    # What the capabilities read (untrusted: each checks what it uses); bounded in bytes by the
    # router's ``max_model_advert_bytes``.
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    # What the operator says the model is (model.toml's ``description``): shown in /v1/models.
    description: Description = ""


class Accelerator(msgspec.Struct, kw_only=True):
    kind: Token  # "cpu", "cuda", "vulkan", "metal", ...
    name: ShortText = ""
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None


class NodeRegistration(msgspec.Struct, kw_only=True):
    node_id: NodeId
    name: NodeName
    base_url: BaseUrl
    # Credential the router must present on every inference request it sends to the node
    # (for a registered OpenAI-compatible endpoint: its upstream API key, possibly empty).
    token: NodeToken
    runtime_types: Annotated[list[Token], msgspec.Meta(max_length=MAX_TOKENS)]
    models: Annotated[list[ModelAdvert], msgspec.Meta(max_length=MAX_LISTED)]
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    accelerators: Annotated[list[Accelerator], msgspec.Meta(max_length=MAX_TOKENS)] = msgspec.field(
        default_factory=list
    )
    version: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[!-~]*\Z")] = ""
    # A node that re-registers while it drains (e.g. its router restarted) stays drained.
    draining: bool = False


Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
MAX_REPORTED_JOBS = 64


class JobProgress(msgspec.Struct, kw_only=True):
    """A running job as a node reports it in its heartbeat (shown in ``/v0/nodes``): on image
    ``image`` of ``images`` (1-based), at step ``step`` of ``steps``, running for ``elapsed_s``."""

    model: ModelId
    step: Count = 0
    steps: Count = 0
    image: Count = 1
    images: Count = 1
    elapsed_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Heartbeat(msgspec.Struct, kw_only=True):
    node_id: NodeId
    active_jobs: Count = 0
    free_slots: Count = 0
    loaded_models: Annotated[list[ModelId], msgspec.Meta(max_length=MAX_LISTED)] = msgspec.field(
        default_factory=list
    )
    queued_jobs: Count = 0
    # Sent when the node's model list changed since registration.
    models: Annotated[list[ModelAdvert], msgspec.Meta(max_length=MAX_LISTED)] | None = None
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


# What a node may report about the work an answer took (read by the router's forwarder; the
# stable_diffusion runtime sends them with its images): seconds spent generating, steps run.
GENERATION_SECONDS_HEADER = "x-llmlb-generation-seconds"
STEPS_HEADER = "x-llmlb-steps"
_MAX_REPORTED_SECONDS = 7 * 24 * 3600.0
_MAX_REPORTED_STEPS = 10**9


def report_generation(seconds: float, steps: int, *, images: int = 0) -> dict[str, str]:
    """For a node runtime: note what an answer took in the node's request log (``images``
    generated, ``seconds`` generating, ``steps`` run), and return the headers that tell the
    router (:func:`note_node_report`), to send with the answer."""
    note_request(images=images, generation_s=seconds, steps=steps)
    return {GENERATION_SECONDS_HEADER: f"{seconds:.3f}", STEPS_HEADER: str(steps)}


def note_node_report(headers: Mapping[str, str]) -> None:
    """Add what a node says its answer took (:data:`GENERATION_SECONDS_HEADER`,
    :data:`STEPS_HEADER`) to the request's log line and metrics. A node is untrusted: a value
    that is not a plain finite number in range is ignored."""
    seconds_text, steps_text = headers.get(GENERATION_SECONDS_HEADER), headers.get(STEPS_HEADER)
    if seconds_text is None:
        return
    try:
        seconds = float(seconds_text)
    except ValueError:
        return
    if not 0.0 < seconds <= _MAX_REPORTED_SECONDS:  # also refuses nan and inf
        return
    steps = int(steps_text) if steps_text is not None and steps_text.isdigit() and len(steps_text) < 11 else 0
    note_request(generation_s=seconds, steps=min(steps, _MAX_REPORTED_STEPS))
