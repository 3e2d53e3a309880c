"""Node settings: CLI flags and ``LLMLB_NODE_*`` environment variables, with working defaults."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any

import msgspec


class NodeSettings(msgspec.Struct, kw_only=True):
    router_url: str = "http://127.0.0.1:8080"
    # Node-scope API key used to register and heartbeat (env LLMLB_API_KEY).
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8090
    # Address the router uses to reach this node (default: host, or 127.0.0.1 for 0.0.0.0).
    advertise_host: str | None = None
    name: str | None = None
    node_id: str | None = None
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

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser()

    @property
    def display_name(self) -> str:
        return self.name or f"{socket.gethostname()}:{self.port}"

    @property
    def id(self) -> str:
        return self.node_id or self.display_name

    @property
    def base_url(self) -> str:
        host = self.advertise_host or self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


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
    return msgspec.convert(raw, NodeSettings, strict=False)
