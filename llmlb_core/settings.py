"""Router settings: embedded defaults, overridden by a TOML file, overridden by environment.

Precedence (lowest first): the defaults below, the TOML file (``--config`` or ``LLMLB_CONFIG``),
then environment variables ``LLMLB_<FIELD>`` (e.g. ``LLMLB_PORT=9000``,
``LLMLB_CAPABILITIES=text,images``). Plugin sections live under ``[plugin.<name>]`` in TOML and
``LLMLB_PLUGIN__<NAME>__<KEY>`` in the environment. With no file and no variables the router
runs as is.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

T = TypeVar("T")

ENV_PREFIX = "LLMLB_"

Positive = Annotated[float, msgspec.Meta(gt=0)]


class RouterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Where the SQLite database (keys, nodes, models) and stored images live.
    data_dir: str = "./llmlb-data"
    # Base URL clients use to reach the router (for image `url` responses); default http://host:port.
    public_url: str | None = None
    # Capabilities (plugin names) that are served; a capability not listed has no routes.
    # None (the default): every installed capability.
    capabilities: list[str] | None = None
    # Load third-party plugins from the `llmlb.plugins` entry-point group.
    load_entry_points: bool = True
    # A node that sends no heartbeat for this long is offline and gets no traffic.
    node_timeout_s: Positive = 60.0
    # OpenAI-compatible endpoints (/v0/endpoints) are health-checked (GET /v1/models) this often.
    endpoint_check_interval_s: Positive = 10.0
    # Upstream (router -> node) timeouts. Reads must outlast the slowest generation.
    upstream_connect_timeout_s: Positive = 5.0
    upstream_timeout_s: Positive = 900.0
    # Bounded wait queue used when every slot of every capable node is busy.
    queue_max: Annotated[int, msgspec.Meta(ge=0)] = 100
    queue_timeout_s: Positive = 60.0
    # Largest request body accepted on JSON routes (multipart routes set their own limits).
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 10 * 1024 * 1024
    # Largest answer read from a node or endpoint (relayed streams included); a larger one is a
    # 502 bad_upstream_response and the node is marked suspect. Routes may set a lower bound.
    max_upstream_answer_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    # Slow and idle clients (llmlb_core/slow_clients.py). A request's headers must be complete
    # within client_header_timeout_s of the connection opening (or of the request's first byte on
    # a kept-alive connection; a connection that sends nothing is closed then too). While a body
    # is read, a pause over client_body_timeout_s between two pieces ends it (408, closed). A
    # kept-alive connection idle for client_keep_alive_s is closed: keep that above the idle
    # timeout of a reverse proxy's upstream connection pool in front of the router.
    client_header_timeout_s: Positive = 10.0
    client_body_timeout_s: Positive = 30.0
    client_keep_alive_s: Positive = 15.0
    log_level: str = "INFO"
    # "text" (one human-readable line per record) or "json" (one JSON object per line, for log
    # shippers: time, level, logger, message and the record's extra fields such as request_id).
    log_format: Literal["text", "json"] = "text"
    # Serve /metrics without a key (default: an admin-scope key is required).
    metrics_public: bool = False
    # Retries on another node after a node failure (connection error, timeout, 5xx).
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # How long a node that failed a request is avoided while healthy nodes have free slots.
    suspect_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 15.0
    # Bootstrap admin key (env LLMLB_ADMIN_KEY); when unset and no key exists, one is generated
    # at first start and printed once.
    admin_key: str | None = None
    # Encrypts upstream endpoint keys at rest (env LLMLB_SECRET_KEY; 16+ characters, see
    # llmlb_core/secretbox.py). Without it they are stored in plain text and start-up warns.
    secret_key: str | None = None
    # PEM CA bundle that HTTPS nodes' certificates are verified against (replaces the system
    # trust store; see llmlb_core/tls.py). None: the system trust store.
    node_ca_bundle: str | None = None
    # Refuse to register nodes whose base_url is not https:// (a 400).
    require_node_tls: bool = False
    # Serve the router itself over HTTPS (nodes then need --router-ca-bundle for a private CA).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Per-plugin settings: [plugin.images] etc.; each plugin validates its own table.
    plugin: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def plugin_settings(self, name: str) -> dict[str, Any]:
        return dict(self.plugin.get(name, {}))


class SettingsError(ValueError):
    """The configuration could not be read or is invalid."""


_FIELD_RE = re.compile(r"at `\$\.(\w+)")
_UNKNOWN_RE = re.compile(r"unknown field `(\w+)`")


def load_plugin_settings(
    name: str,
    table: Mapping[str, Any],
    type_: type[T],
    *,
    section: str = "plugin",
    env_prefix: str = f"{ENV_PREFIX}PLUGIN__",
) -> T:
    """A plugin's ``[plugin.<name>]`` table (a node runtime's: ``section="runtime"``) as its
    settings struct; strings from the environment are converted ("true", "2"). A bad value is a
    :class:`SettingsError` naming the table, the key and its environment variable
    (``<env_prefix><NAME>__<KEY>``), which ``llmlb serve`` / ``llmlb node`` report in one line
    (exit 2)."""
    try:
        return msgspec.convert(dict(table), type_, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD_RE.search(text) or _UNKNOWN_RE.search(text)
        where = f"[{section}.{name}]"
        if match:
            key = match.group(1)
            where += f" {key} (env {env_prefix}{name.upper()}__{key.upper()})"
        raise SettingsError(f"invalid setting {where}: {text}") from None


def _env_overrides(environ: dict[str, str], fields: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name.startswith("plugin__"):
            parts = name.split("__")
            if len(parts) == 3:
                out.setdefault("plugin", {}).setdefault(parts[1], {})[parts[2]] = value
            continue
        if name not in fields:
            continue
        if name == "capabilities":
            out[name] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            out[name] = value
    return out


def merge_tables(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested tables merged key by key (config layers:
    defaults, TOML file, environment, flags)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> RouterSettings:
    """Build settings from defaults, the TOML file, the environment and explicit overrides."""
    environ = dict(os.environ if environ is None else environ)
    config = config or environ.get(f"{ENV_PREFIX}CONFIG")
    raw: dict[str, Any] = {}
    if config:
        path = Path(config)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config {path}: {exc}") from exc
    fields = set(RouterSettings.__struct_fields__) - {"plugin"}
    raw = merge_tables(raw, _env_overrides(environ, fields))
    raw = merge_tables(raw, {k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, RouterSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc
