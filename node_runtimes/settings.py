"""Node settings: embedded defaults, a TOML file, ``LLMLB_NODE_*`` variables, CLI flags.

Precedence (lowest first): the defaults below, the TOML file (``llmlb node --config`` or
``LLMLB_NODE_CONFIG``), environment variables ``LLMLB_NODE_<FIELD>`` (and ``LLMLB_API_KEY``),
then the command's flags. Each runtime has a table of its own: ``[runtime.<name>]`` in TOML,
``LLMLB_NODE_RUNTIME__<NAME>__<KEY>`` in the environment, plus the runtime's flags (e.g.
``--upstream``, ``--threads``). A table is converted to its runtime's settings type once, when
the node starts (:func:`load_runtime_settings`); the node knows no runtime's keys.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from llmlb_core.config.problems import describe_invalid, unknown_variables
from llmlb_core.config.settings import ENV_PREFIX as ROUTER_ENV_PREFIX
from llmlb_core.config.settings import (
    RouterSettings,
    SettingsError,
    checked_log_level,
    lists_from_text,
    load_plugin_settings,
    merge_tables,
    read_toml,
    text_list,
)
from llmlb_core.protocol import NodeName

T = TypeVar("T")

ENV_PREFIX = "LLMLB_NODE_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
RUNTIME_ENV_PREFIX = f"{ENV_PREFIX}RUNTIME__"
# LLMLB_NODE_RUNTIME__<NAME>__<KEY>: a key of a runtime's [runtime.<name>] table.
RUNTIME_ENV_RE = re.compile(rf"{RUNTIME_ENV_PREFIX}(?:(?!__)\w)+__(?:(?!__)\w)+", re.IGNORECASE)
# The node's key may also come from LLMLB_API_KEY (as the node's other clients name it).
API_KEY_ENV = f"{ROUTER_ENV_PREFIX}API_KEY"
DEFAULT_ROUTER_URL = "http://127.0.0.1:8080"


def shown_url(url: str) -> str:
    """``url`` as it may be printed: whatever stands before an ``@`` in its authority (a user,
    a password, a token) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


def router_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a router's URL (None: it can): an http:// or https:// URL with a
    host and no credentials (the node's key goes in --api-key, never in a URL)."""
    shown = repr(shown_url(url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{shown}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{shown}: expected an http:// or https:// URL"
    if "@" in parts.netloc:
        return (
            f"{shown}: no credentials in a router URL (give the node's key with --api-key or LLMLB_API_KEY)"
        )
    if not parts.hostname:
        return f"{shown}: no host"
    return None


def checked_router_urls(value: str | list[str]) -> list[str]:
    """``router_url`` as a list of URLs, in order, each once, without a trailing ``/``: one URL,
    several comma-separated (or a JSON array, as the environment gives lists), or a list. A
    ValueError that msgspec reports at ``router_url`` names the first bad one (credentials
    hidden)."""
    at = " - at `$.router_url`"
    try:
        items = text_list(value) if isinstance(value, str) else list(value)
    except ValueError:
        raise ValueError(f"expected URLs, comma-separated or a JSON array{at}") from None
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected URLs, got {item!r}{at}")
        problem = router_url_problem(item.strip())
        if problem:
            raise ValueError(f"{problem}{at}")
        url = item.strip().rstrip("/")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError(f"expected at least one router URL{at}")
    return urls


def sanitized_hostname(hostname: str | None = None, max_length: int = 40) -> str:
    """The host name in the node-name charset (``[A-Za-z0-9._-]``, starting alphanumeric)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname or socket.gethostname())
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:max_length].rstrip("-._")
    return cleaned or "node"


# dict=True: room for the cached default id (one random id per settings object, i.e. process).
class NodeSettings(msgspec.Struct, kw_only=True, dict=True, forbid_unknown_fields=True):
    # The router, or its replicas: one URL, or several (TOML a list; LLMLB_NODE_ROUTER_URL
    # comma-separated; --router repeated). The node registers with the first that answers and,
    # when that one stops answering, with the next (RouterLink). Kept as given: a string for
    # one URL, a list for several; read it as `router_urls`.
    router_url: str | list[str] = DEFAULT_ROUTER_URL
    # Node-scope API key used to register and heartbeat (env LLMLB_API_KEY).
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8090
    # Address the router uses to reach this node (default: host, or 127.0.0.1 for 0.0.0.0).
    advertise_host: str | None = None
    # Shown in /v0/nodes and logs (default: <hostname>-<port>); charset [A-Za-z0-9._-].
    name: NodeName | None = None
    # Stable id for operators who want one (default: <hostname>-<port>-<8 random hex>, new for
    # every process; the router replaces the stale entry of a restarted node).
    node_id: NodeName | None = None
    models_dir: str = "./models"
    # Runtime types to start (empty: every installed runtime that has something to serve).
    runtimes: list[str] = msgspec.field(default_factory=list)
    # Heartbeat interval; None: what the router asks for at registration.
    heartbeat_interval_s: float | None = None
    # Per-runtime settings tables, e.g. {"openai_compatible": {"url": ...}}: `[runtime.<name>]`
    # in TOML. Each runtime converts its own (see RuntimeType.settings).
    runtime_settings: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict, name="runtime")
    # Slow and idle clients, as the router's client_* settings (llmlb_core/server/slow_clients.py).
    # Keep-alive outlasts the router's pooled connections to nodes (60 s idle), so the node never
    # closes one just as the router sends a request on it (that would count as a node failure).
    client_header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    client_body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    client_body_deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    client_keep_alive_s: Annotated[float, msgspec.Meta(gt=0)] = 75.0
    client_max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    client_max_headers: Annotated[int, msgspec.Meta(ge=16)] = 100
    # Serve HTTPS with this certificate (PEM, chain first) and key; the node then advertises an
    # https:// base_url (env LLMLB_NODE_TLS_CERT / LLMLB_NODE_TLS_KEY).
    tls_cert: str | None = None
    tls_key: str | None = None
    # PEM CA bundle the router's certificate is verified against (None: the system trust store).
    router_ca_bundle: str | None = None
    log_level: str = "INFO"
    # "text" or "json" (one JSON object per line), as the router's log_format.
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        self.log_level = checked_log_level(self.log_level)
        urls = checked_router_urls(self.router_url)
        self.router_url = urls[0] if len(urls) == 1 else urls

    @property
    def router_urls(self) -> list[str]:
        """The routers to register with, in the order they are tried."""
        return [self.router_url] if isinstance(self.router_url, str) else list(self.router_url)

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser()

    @property
    def display_name(self) -> str:
        return self.name or f"{sanitized_hostname()}-{self.port}"

    @cached_property
    def id(self) -> str:
        return self.node_id or f"{sanitized_hostname()}-{self.port}-{secrets.token_hex(4)}"

    @property
    def base_url(self) -> str:
        host = self.advertise_host or self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"


def load_runtime_settings(name: str, table: Mapping[str, Any], type_: type[T]) -> T:
    """A runtime's ``[runtime.<name>]`` table as its settings type: the router's one settings
    loader, naming ``LLMLB_NODE_RUNTIME__<NAME>__<KEY>`` in its one-line error."""
    return load_plugin_settings(name, table, type_, section="runtime", env_prefix=RUNTIME_ENV_PREFIX)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(RUNTIME_ENV_PREFIX):
            runtime, _, setting = key[len(RUNTIME_ENV_PREFIX) :].lower().partition("__")
            if runtime and setting:
                raw.setdefault("runtime", {}).setdefault(runtime, {})[setting] = value
    for field in NodeSettings.__struct_fields__:
        text = environ.get(f"{ENV_PREFIX}{field.upper()}")
        if text is not None and field != "runtime_settings":
            raw[field] = text
    if "api_key" not in raw and environ.get(API_KEY_ENV):
        raw["api_key"] = environ[API_KEY_ENV]
    return lists_from_text(raw, NodeSettings)


def node_env_problems(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """A line per ``LLMLB_NODE_*`` variable that the node does not read (``also_known``: those
    its command line reads, e.g. a runtime flag's ``LLMLB_NODE_THREADS``). The router's own
    ``LLMLB_NODE_TIMEOUT_S`` and ``LLMLB_NODE_CA_BUNDLE`` are known, not the node's to flag."""
    fields = set(NodeSettings.__struct_fields__) - {"runtime_settings"}
    router_fields = set(RouterSettings.__struct_fields__)
    return unknown_variables(
        environ,
        prefix=ENV_PREFIX,
        known={
            *(f"{ENV_PREFIX}{f.upper()}" for f in fields),
            *(f"{ROUTER_ENV_PREFIX}{f.upper()}" for f in router_fields),
            CONFIG_ENV,
            *also_known,
        },
        patterns=[RUNTIME_ENV_RE],
    )


def raw_node_settings(
    config: str | Path | None = None,
    *,
    environ: Mapping[str, str],
    runtime_settings: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The node's settings table before conversion: the TOML file (``config``, else
    ``LLMLB_NODE_CONFIG``), the environment, the flags (``overrides``, None: unset) and the
    runtime flags' tables, merged key by key."""
    config = config or environ.get(CONFIG_ENV)
    raw = read_toml(config, "node config") if config else {}
    raw = merge_tables(raw, _env_overrides(environ))
    raw = merge_tables(raw, {k: v for k, v in overrides.items() if v is not None})
    return merge_tables(raw, {"runtime": runtime_settings or {}})


def load_node_settings(
    config: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    runtime_settings: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> NodeSettings:
    """Settings from the defaults, the TOML file, the environment and the flags
    (:func:`raw_node_settings`)."""
    raw = raw_node_settings(
        config,
        environ=os.environ if environ is None else environ,
        runtime_settings=runtime_settings,
        **overrides,
    )
    try:
        return msgspec.convert(raw, NodeSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(
            describe_invalid(exc, shown_table(raw), NodeSettings, noun="node setting", env_prefix=ENV_PREFIX)
        ) from None


def shown_table(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` as it may be printed in a problem's line: the router URLs without credentials
    (still with an ``@``, so that what is wrong with them stays wrong)."""
    table = dict(raw)
    value = table.get("router_url")
    if isinstance(value, str):
        table["router_url"] = ",".join(shown_url(part) for part in value.split(","))
    elif isinstance(value, list):
        table["router_url"] = [shown_url(v) if isinstance(v, str) else v for v in value]
    return table
