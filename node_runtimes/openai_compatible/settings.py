"""The ``openai_compatible`` runtime's settings: its ``[runtime.openai_compatible]`` table.

Environment: ``LLMLB_NODE_RUNTIME__OPENAI_COMPATIBLE__<KEY>``; the ``llmlb node`` flags
``--upstream``, ``--upstream-key``, ``--upstream-kind``, ``--upstream-model``,
``--upstream-capability`` and ``--upstream-slots`` set ``url``, ``api_key``, ``kind``,
``models``, ``capabilities`` and ``slots``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from llmlb_node.api import KINDS

if TYPE_CHECKING:
    Kind = str
else:
    # One of llmlb_core's upstream kinds (llama_cpp, vllm, ...): a bad one is named at start-up.
    Kind = Literal[KINDS]


class OpenAICompatibleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The server to front, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine). None: the runtime
    # has nothing to serve (an error when it was named with --runtime).
    url: str | None = None
    # The key the server wants (sent as a bearer token); the router's credential never reaches it.
    api_key: str | None = None
    kind: Kind = "generic"
    # Capability flags of every model it serves, and of single models (win over `capabilities`).
    # Undeclared: the router gives them flags (its capabilities' rules for the model id and kind).
    capabilities: list[str] | None = None
    model_capabilities: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # Serve only these models (also: the models of a server without GET /v1/models).
    models: list[str] | None = None
    # Requests sent to the server at once (the router balances on it).
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    # How often the server's model list is re-read.
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    read_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
