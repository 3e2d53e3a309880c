"""llmlb's public plugin API: everything a capability plugin or a node runtime may import.

``__all__`` below is the whole contract; anything else in ``llmlb_core`` is internal and may
change in any release (``make test`` checks with import-linter that the built-in plugins keep to
this module). See ``docs/plugins.md`` for a guide and ``examples/`` for two small plugins.

A capability plugin implements ``llmlb_register_capabilities`` and registers a
:class:`Capability`, whose ``build_routes(context)`` returns its Litestar handlers; the
:class:`CapabilityContext` holds the plugin's parsed settings, its data dir, the public URL, the
:class:`Forwarder` that sends work to nodes, the :class:`ModelCatalog`, and (on PostgreSQL)
the :class:`SharedBlobs` that every router of the database sees.
"""

from __future__ import annotations

from llmlb_core.capability import (
    Capability,
    CapabilityContext,
    Forwarder,
    ModelCatalog,
    ModelDescriber,
    NoSettings,
    SharedBlobs,
    UpstreamFlags,
)
from llmlb_core.config.settings import SettingsError, load_plugin_settings
from llmlb_core.hookspecs import hookimpl
from llmlb_core.protocol import JobProgress, ModelAdvert, report_generation
from llmlb_core.server.access_log import QUIET_LOG_OPT, RequestRecord, current_request, note_request
from llmlb_core.server.bodies import (
    MAX_JSON_DEPTH,
    check_json_bytes,
    decode_json,
    decode_json_bytes,
    with_body_defaults,
)
from llmlb_core.server.credentials import PUBLIC_OPT
from llmlb_core.server.errors import (
    BadUpstreamAnswer,
    ModelNotFound,
    NoCapableNodes,
    NodeFailure,
    OpenAIError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
    exception_handlers,
    from_msgspec_error,
)
from llmlb_core.server.json_route import json_route
from llmlb_core.server.multipart import (
    MultipartRelay,
    ParsedForm,
    Upload,
    convert_fields,
    encode_multipart,
    file_too_large,
    parse_multipart,
)
from llmlb_core.server.openapi_docs import openapi_form_body, openapi_json_body
from llmlb_core.server.stream_body import StreamBody
from llmlb_core.upstream.answer import EVENT_STREAM_TYPES, JSON_TYPES, STREAM_TYPES, UpstreamResult
from llmlb_core.upstream.client import (
    BadAnswer,
    answer_type,
    close_response,
    is_garbled,
    is_timeout,
    upstream_client,
)
from llmlb_core.upstream.event_stream import EventCheck, EventStream
from llmlb_core.upstream.openai_servers import (
    KINDS,
    UpstreamError,
    auth_headers,
    build_adverts,
    fetch_model_ids,
    normalize_url,
)
from llmlb_core.upstream.relay import SSE_HEADERS, Relay, RelayStream, passed_headers
from llmlb_core.upstream.sse import SSEEvent, error_event, format_event, read_events

__all__ = [
    "EVENT_STREAM_TYPES",
    "JSON_TYPES",
    "KINDS",
    "MAX_JSON_DEPTH",
    "PUBLIC_OPT",
    "QUIET_LOG_OPT",
    "SSE_HEADERS",
    "STREAM_TYPES",
    "BadAnswer",
    "BadUpstreamAnswer",
    "Capability",
    "CapabilityContext",
    "EventCheck",
    "EventStream",
    "Forwarder",
    "JobProgress",
    "ModelAdvert",
    "ModelCatalog",
    "ModelDescriber",
    "ModelNotFound",
    "MultipartRelay",
    "NoCapableNodes",
    "NoSettings",
    "NodeFailure",
    "OpenAIError",
    "ParsedForm",
    "Relay",
    "RelayStream",
    "RequestRecord",
    "SSEEvent",
    "SettingsError",
    "SharedBlobs",
    "StreamBody",
    "Upload",
    "UpstreamError",
    "UpstreamFlags",
    "UpstreamResult",
    "UpstreamStreamBroken",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "answer_type",
    "auth_headers",
    "build_adverts",
    "check_json_bytes",
    "close_response",
    "convert_fields",
    "current_request",
    "decode_json",
    "decode_json_bytes",
    "encode_multipart",
    "error_body",
    "error_event",
    "exception_handlers",
    "fetch_model_ids",
    "file_too_large",
    "format_event",
    "from_msgspec_error",
    "hookimpl",
    "is_garbled",
    "is_timeout",
    "json_route",
    "load_plugin_settings",
    "normalize_url",
    "note_request",
    "openapi_form_body",
    "openapi_json_body",
    "parse_multipart",
    "passed_headers",
    "read_events",
    "report_generation",
    "upstream_client",
    "with_body_defaults",
]
