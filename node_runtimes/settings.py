"""Node settings: CLI flags and ``LLMLB_NODE_*`` environment variables, with working defaults."""

from __future__ import annotations

import os
import re
import secrets
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import msgspec

from llmlb_core.protocol import NodeName
from llmlb_core.settings import SettingsError


def sanitized_hostname(hostname: str | None = None, max_length: int = 40) -> str:
    """The host name in the node-name charset (``[A-Za-z0-9._-]``, starting alphanumeric)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname or socket.gethostname())
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:max_length].rstrip("-._")
    return cleaned or "node"


# dict=True: room for the cached default id (one random id per settings object, i.e. process).
class NodeSettings(msgspec.Struct, kw_only=True, dict=True):
    router_url: str = "http://127.0.0.1:8080"
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
    # StableDiffusion runtime: unload a model unused for this long (0: never).
    idle_unload_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    # Threads for stable-diffusion.cpp (0: all cores).
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Weights format when a model folder holds several: auto (by environment), safetensors, gguf.
    weights_preference: str = "auto"
    # Per-runtime settings tables, e.g. {"openai_compatible": {...}}.
    runtime_settings: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # Slow and idle clients, as the router's client_* settings (llmlb_core/slow_clients.py).
    # Keep-alive outlasts the router's pooled connections to nodes (60 s idle), so the node never
    # closes one just as the router sends a request on it (that would count as a node failure).
    client_header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    client_body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    client_keep_alive_s: Annotated[float, msgspec.Meta(gt=0)] = 75.0
    # Serve HTTPS with this certificate (PEM, chain first) and key; the node then advertises an
    # https:// base_url (env LLMLB_NODE_TLS_CERT / LLMLB_NODE_TLS_KEY).
    tls_cert: str | None = None
    tls_key: str | None = None
    # PEM CA bundle the router's certificate is verified against (None: the system trust store).
    router_ca_bundle: str | None = None

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


def node_settings_from_env(**overrides: Any) -> NodeSettings:
    """Settings from ``LLMLB_NODE_<FIELD>`` variables (plus ``LLMLB_API_KEY``) and overrides."""
    raw: dict[str, Any] = {}
    for field in NodeSettings.__struct_fields__:
        value = os.environ.get(f"LLMLB_NODE_{field.upper()}")
        if value is not None:
            raw[field] = value.split(",") if field == "runtimes" else value
    if "api_key" not in raw and os.environ.get("LLMLB_API_KEY"):
        raw["api_key"] = os.environ["LLMLB_API_KEY"]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, NodeSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid node setting: {exc}") from None
