"""llmlb's public API for node runtime plugins: everything a runtime may import from llmlb.

``__all__`` below is the whole contract; the rest of ``llmlb_node`` (the node's app, its link to
the router, its settings and plugin manager) is internal. A runtime imports this module, its own
package, and the contract modules of the capability it serves (e.g. ``llmlb_plugins.images``'
``protocol``, ``validation`` and ``decoding``); ``make test`` checks that the built-in runtimes
keep to that with import-linter. See ``docs/plugins.md`` for a guide and ``examples/`` for a
small runtime.

A runtime plugin implements ``llmlb_node_register_runtimes`` (:data:`hookimpl`, pluggy project
``llmlb_node``, entry-point group ``llmlb.node_runtimes``) and registers a :class:`RuntimeType`:
its name, its settings type (a ``msgspec.Struct``; :class:`NoSettings` when it has none), and a
factory that gets a :class:`RuntimeContext` and returns a :class:`Runtime` (or None: nothing to
serve here). A runtime advertises :class:`ModelAdvert` s, serves Litestar routes (errors as
:class:`OpenAIError`; JSON bodies through :func:`decode_json_bytes`, forms through
:func:`parse_multipart`, the router's own multipart reader and limits), and reports its
:class:`RuntimeLoad`. A runtime that fronts an OpenAI-compatible server relays its answers with
:class:`Relay` / :class:`RelayStream`, as the router does.
"""

from __future__ import annotations

from llmlb_core.api import (
    KINDS,
    JobProgress,
    ModelAdvert,
    NoSettings,
    OpenAIError,
    ParsedForm,
    Relay,
    RelayStream,
    Upload,
    UpstreamError,
    auth_headers,
    build_adverts,
    close_response,
    convert_fields,
    decode_json_bytes,
    fetch_model_ids,
    is_garbled,
    is_timeout,
    json_route,
    normalize_url,
    parse_multipart,
    passed_headers,
    report_generation,
    upstream_client,
)
from llmlb_node.hookspecs import hookimpl
from llmlb_node.runtime import Runtime, RuntimeConfigError, RuntimeContext, RuntimeLoad, RuntimeType

__all__ = [
    "KINDS",
    "JobProgress",
    "ModelAdvert",
    "NoSettings",
    "OpenAIError",
    "ParsedForm",
    "Relay",
    "RelayStream",
    "Runtime",
    "RuntimeConfigError",
    "RuntimeContext",
    "RuntimeLoad",
    "RuntimeType",
    "Upload",
    "UpstreamError",
    "auth_headers",
    "build_adverts",
    "close_response",
    "convert_fields",
    "decode_json_bytes",
    "fetch_model_ids",
    "hookimpl",
    "is_garbled",
    "is_timeout",
    "json_route",
    "normalize_url",
    "parse_multipart",
    "passed_headers",
    "report_generation",
    "upstream_client",
]
