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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect

from llmlb_core.config.problems import describe_invalid, unknown_variables

T = TypeVar("T")

ENV_PREFIX = "LLMLB_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
# LLMLB_PLUGIN__<NAME>__<KEY>: a key of a plugin's [plugin.<name>] table.
PLUGIN_ENV_RE = re.compile(rf"{ENV_PREFIX}PLUGIN__(?:(?!__)\w)+__(?:(?!__)\w)+", re.IGNORECASE)
# The node's variables (checked by `llmlb node`), except the router's own node_* settings.
NODE_ENV_PREFIX = f"{ENV_PREFIX}NODE_"

Positive = Annotated[float, msgspec.Meta(gt=0)]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def checked_log_level(value: str) -> str:
    """``value`` as a logging level name (any case), upper-cased; else a ValueError that
    msgspec reports at ``log_level`` (:func:`~llmlb_core.config.problems.describe_invalid`)."""
    if value.upper() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS).lower()} - at `$.log_level`")
    return value.upper()


class RouterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Where the SQLite database (keys, nodes, models) and stored images live.
    data_dir: str = "./llmlb-data"
    # Where keys, nodes, models and endpoints live (llmlb_core/storage/urls.py): unset, the SQLite
    # file in data_dir; sqlite:///path, another SQLite file; postgresql://user:password@host/db,
    # a PostgreSQL database (schema migrated at start). Shown only without its password.
    database_url: str | None = None
    # Live state several routers share (llmlb_core/shared/, docs/scaling.md): node registrations
    # and heartbeats, node slots, key/model/endpoint changes, failure marks. Unset: this router
    # keeps them itself (one router). redis://[:password@]host:port/db or rediss:// (TLS).
    redis_url: str | None = None
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
    # What a node may advertise (registration and heartbeats; a node is untrusted): at most
    # max_models_per_node models, each at most max_model_advert_bytes of JSON (id, description,
    # details), the whole message at most max_advert_bytes. Over a bound: 400 or 413 naming it.
    max_models_per_node: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    max_model_advert_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    max_advert_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 2 * 1024 * 1024
    # Relayed streams (text and audio: server-sent events, audio bytes) are checked as they pass
    # (docs/text-and-audio.md, "Checked streams"): one server-sent event may take at most
    # max_stream_event_bytes, and a stream that sends nothing to pass on for
    # stream_idle_timeout_s (a stall, or bytes that never complete an event) is ended (504
    # upstream_timeout before its first byte, an error event after it). Their total is bounded
    # by max_upstream_answer_bytes.
    max_stream_event_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1024 * 1024
    stream_idle_timeout_s: Positive = 300.0
    # Slow and idle clients (llmlb_core/server/slow_clients.py). A request's headers must be complete
    # within client_header_timeout_s of the connection opening (or of the request's first byte on
    # a kept-alive connection; a connection that sends nothing is closed then too). While a body
    # is read, a pause over client_body_timeout_s between two pieces ends it (408, closed), and so
    # does a body not complete client_body_deadline_s after it started (enough for 75 MB at
    # 1 Mbit/s). A kept-alive connection idle for client_keep_alive_s is closed: keep that above
    # the idle timeout of a reverse proxy's upstream connection pool in front of the router. A
    # request line and headers over client_max_header_bytes, or more than client_max_headers
    # header fields, are a 431 (closed).
    client_header_timeout_s: Positive = 10.0
    client_body_timeout_s: Positive = 30.0
    client_body_deadline_s: Positive = 600.0
    client_keep_alive_s: Positive = 15.0
    client_max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    client_max_headers: Annotated[int, msgspec.Meta(ge=16)] = 100
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
    # llmlb_core/storage/secretbox.py). Without it they are stored in plain text and start-up warns.
    secret_key: str | None = None
    # PEM CA bundle that HTTPS nodes' certificates are verified against (replaces the system
    # trust store; see llmlb_core/server/tls.py). None: the system trust store.
    node_ca_bundle: str | None = None
    # Refuse to register nodes whose base_url is not https:// (a 400).
    require_node_tls: bool = False
    # Serve the router itself over HTTPS (nodes then need --router-ca-bundle for a private CA).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Per-plugin settings: [plugin.images] etc.; each plugin validates its own table.
    plugin: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_level = checked_log_level(self.log_level)

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


def text_list(text: str) -> list[Any]:
    """A list setting written as text, as the environment gives it: a JSON array
    (``["a", "b"]``), else comma-separated (``a,b``; blanks around items and empty items
    dropped). A ValueError for a text that starts with ``[`` and is not a JSON array."""
    if text.lstrip().startswith("["):
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            value = None
        if not isinstance(value, list):
            raise ValueError(f"not a JSON array: {text!r}")
        return value
    return [part.strip() for part in text.split(",") if part.strip()]


def _as_list(text: str) -> list[Any] | str:
    try:
        return text_list(text)
    except ValueError:
        return text  # left to the type check: "expected a list (...), got '[a,'"


_ARRAYS = (
    msgspec.inspect.ListType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
    msgspec.inspect.VarTupleType,
    msgspec.inspect.TupleType,
)
_TEXTS = (msgspec.inspect.StrType, msgspec.inspect.LiteralType, msgspec.inspect.EnumType)


def _list_keys(type_: type[Any]) -> frozenset[str]:
    """The keys of ``type_`` (a struct or dataclass) whose field takes a list and no string."""
    try:
        info = msgspec.inspect.type_info(type_)
    except (TypeError, ValueError):
        return frozenset()
    keys = set()
    for field in getattr(info, "fields", ()):
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        if any(isinstance(k, _ARRAYS) for k in kinds) and not any(isinstance(k, _TEXTS) for k in kinds):
            keys.add(field.encode_name)
    return frozenset(keys)


def lists_from_text(table: Mapping[str, Any], type_: type[Any]) -> dict[str, Any]:
    """``table`` with the text given for each list field of ``type_`` read as a list
    (:func:`text_list`): how a settings table takes lists from the environment, where every
    value is a string. Used for the top-level settings and every plugin's and runtime's table."""
    keys = _list_keys(type_)
    return {k: _as_list(v) if k in keys and isinstance(v, str) else v for k, v in table.items()}


def load_plugin_settings(
    name: str,
    table: Mapping[str, Any],
    type_: type[T],
    *,
    section: str = "plugin",
    env_prefix: str = f"{ENV_PREFIX}PLUGIN__",
) -> T:
    """A plugin's ``[plugin.<name>]`` table (a node runtime's: ``section="runtime"``) as its
    settings struct; strings from the environment are converted ("true", "2"; for a list,
    ``a,b`` or ``["a", "b"]``: :func:`lists_from_text`). A bad value is a
    :class:`SettingsError` naming the table, the key and its environment variable
    (``<env_prefix><NAME>__<KEY>``), which ``llmlb serve`` / ``llmlb node`` report in one line
    (exit 2)."""
    table = lists_from_text(table, type_)
    try:
        return msgspec.convert(table, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(
            describe_invalid(
                exc, table, type_, where=f"[{section}.{name}]", env_prefix=f"{env_prefix}{name.upper()}__"
            )
        ) from None


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
        if name in fields:
            out[name] = value
    return lists_from_text(out, RouterSettings)


def router_env_problems(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """A line per ``LLMLB_*`` variable that the router does not read (``also_known``: those the
    command line reads, e.g. ``LLMLB_ROUTER``). ``LLMLB_NODE_*`` are the node's to check."""
    fields = set(RouterSettings.__struct_fields__) - {"plugin"}
    return unknown_variables(
        environ,
        prefix=ENV_PREFIX,
        known={*(f"{ENV_PREFIX}{f.upper()}" for f in fields), CONFIG_ENV, *also_known},
        patterns=[PLUGIN_ENV_RE],
        ignore_prefixes=[NODE_ENV_PREFIX],
    )


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


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a table; one that cannot be read or parsed is a :class:`SettingsError`."""
    path = Path(path).expanduser()
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {what} {path}: {exc}") from None


def raw_settings(
    config: str | Path | None = None, *, environ: Mapping[str, str], **overrides: Any
) -> dict[str, Any]:
    """The router's settings table before conversion: the TOML file (``config``, else
    ``LLMLB_CONFIG``), the environment and the overrides laid over each other."""
    config = config or environ.get(CONFIG_ENV)
    raw = read_toml(config) if config else {}
    fields = set(RouterSettings.__struct_fields__) - {"plugin"}
    raw = merge_tables(raw, _env_overrides(dict(environ), fields))
    return merge_tables(raw, {k: v for k, v in overrides.items() if v is not None})


def load_settings(
    config: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> RouterSettings:
    """Build settings from defaults, the TOML file, the environment and explicit overrides."""
    raw = raw_settings(config, environ=os.environ if environ is None else environ, **overrides)
    try:
        return msgspec.convert(raw, RouterSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(describe_invalid(exc, raw, RouterSettings, env_prefix=ENV_PREFIX)) from None
