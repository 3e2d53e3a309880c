"""``llmlb node``, added to ``llmlb`` through the core's ``llmlb_register_commands`` hook (this
module is the ``node`` entry point of the ``llmlb.plugins`` group).

It builds :class:`~llmlb_node.settings.NodeSettings` from its flags, the ``LLMLB_NODE_*``
variables and an optional TOML file. The node's own flags are defined here; each installed
runtime type adds its own (``RuntimeType.cli_options``: ``--upstream*`` for openai_compatible,
``--threads``, ``--idle-unload``, ``--weights`` for stable_diffusion), whose values set keys of
that runtime's table, which the runtime converts itself. The node names no runtime.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any

import click

from llmlb_core.api import hookimpl
from llmlb_core.cli.config_check import add_config_kind
from llmlb_core.cli.support import (
    CONTEXT_SETTINGS,
    LOG_LEVEL_CHOICE,
    click_envvars,
    default_of,
    given,
    settings_option,
    setup_logging,
)
from llmlb_core.config.settings import SettingsError
from llmlb_node.config_check import NODE
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from llmlb_node.runtime import RuntimeType
from llmlb_node.settings import (
    CONFIG_ENV,
    DEFAULT_ROUTER_URL,
    ENV_PREFIX,
    NodeSettings,
    node_env_problems,
)

log = logging.getLogger("llmlb.config")


# What an option's default is when its plugin gave none (None, or click's own sentinel).
_NO_DEFAULT = click.Option(["--probe"]).default


def runtime_options(types: Mapping[str, RuntimeType[Any]]) -> dict[str, tuple[click.Option, str, str]]:
    """Every runtime's ``cli_options``, renamed ``<runtime>.<key>`` so that two runtimes' keys
    cannot clash: ``{param name: (option, runtime, key)}``. An option without a default shows
    the one of the runtime's settings field, and its help names the runtime."""
    out: dict[str, tuple[click.Option, str, str]] = {}
    for runtime_type in types.values():
        for template in runtime_type.cli_options:
            option = copy.copy(template)
            key = template.name or ""
            if option.default in (None, _NO_DEFAULT) and isinstance(runtime_type.settings, type):
                with contextlib.suppress(KeyError, TypeError):
                    option.default = default_of(runtime_type.settings, key)
            option.name = f"{runtime_type.name}.{key}"
            option.show_envvar = True
            option.help = f"{runtime_type.name}: {template.help or key}"
            out[option.name] = (option, runtime_type.name, key)
    return out


def runtime_tables(
    params: Mapping[str, Any], options: Mapping[str, tuple[click.Option, str, str]]
) -> dict[str, dict[str, Any]]:
    """The runtime flags in ``params`` as per-runtime tables (repeated flags as lists)."""
    tables: dict[str, dict[str, Any]] = {}
    for param, (_, runtime, key) in options.items():
        if param in params:
            value = params[param]
            tables.setdefault(runtime, {})[key] = list(value) if isinstance(value, tuple) else value
    return tables


def node_option(*decls: str, field: str, help: str, **attrs: Any) -> Any:
    return settings_option(
        *decls, struct=NodeSettings, field=field, env_prefix=ENV_PREFIX, help=help, **attrs
    )


NEED_A_KEY = (
    "llmlb node needs a node-scope API key: pass --api-key or set LLMLB_API_KEY "
    "(an admin makes one with `llmlb keys create NAME --scope node`)"
)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--router",
    "router_url",
    multiple=True,
    default=[DEFAULT_ROUTER_URL],
    help="router URL; repeat it for router replicas: the node registers with the first that "
    "answers, and with the next when that one stops answering (comma-separated or a JSON array "
    f"in the variable)  [env var: {ENV_PREFIX}ROUTER_URL]",
)
@node_option("--host", field="host", help="address to listen on")
@node_option("--port", field="port", type=int, help="port to listen on")
@node_option(
    "--advertise-host",
    field="advertise_host",
    help="address the router uses to reach this node  [default: --host, 127.0.0.1 for 0.0.0.0]",
)
@node_option("--models-dir", field="models_dir", help="one folder per model (`llmlb demo-model DIR/demo`)")
@node_option(
    "--api-key",
    field="api_key",
    env="LLMLB_API_KEY or LLMLB_NODE_API_KEY",
    help="node-scope API key (`llmlb keys create NAME --scope node`)",
)
@node_option("--name", field="name", help="name shown in /v0/nodes and logs  [default: <hostname>-<port>]")
@node_option(
    "--node-id",
    field="node_id",
    help="stable node id  [default: <hostname>-<port>-<random>, new every start]",
)
@node_option(
    "--runtime",
    field="runtimes",
    multiple=True,
    show_default=False,
    help="runtime type to start (repeatable; comma-separated or a JSON array in the variable)  "
    "[default: every installed one with something to serve]",
)
@node_option(
    "--heartbeat-interval",
    field="heartbeat_interval_s",
    type=float,
    help="seconds between heartbeats  [default: what the router asks for]",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="TOML node config: node settings and [runtime.<name>] tables "
    f"(check one with `llmlb config check FILE`)  [env var: {CONFIG_ENV}]",
)
@node_option("--log-level", field="log_level", type=LOG_LEVEL_CHOICE, help="least severe log level shown")
@node_option(
    "--log-format",
    field="log_format",
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object per line (for log shippers)",
)
@node_option("--tls-cert", field="tls_cert", help="serve HTTPS with this PEM certificate (chain first)")
@node_option("--tls-key", field="tls_key", help="private key of --tls-cert")
@node_option(
    "--router-ca-bundle",
    field="router_ca_bundle",
    help="PEM CA bundle to verify an HTTPS router against  [default: the system's trust store]",
)
def node(**params: Any) -> int:
    """Run a node that serves models to a router.

    Each setting is taken from its flag, else its LLMLB_NODE_* variable, else the config file,
    else the default shown here. Every setting, its variable and its TOML key:
    docs/configuration.md.
    """
    ctx = click.get_current_context()
    options: dict[str, tuple[click.Option, str, str]] = ctx.meta.get(RUNTIME_OPTIONS, {})
    from llmlb_core.server.serving import run
    from llmlb_core.server.slow_clients import ClientLimits
    from llmlb_core.server.tls import check_server_cert
    from llmlb_node.app import create_node_app
    from llmlb_node.settings import load_node_settings

    flags = given(ctx, params)
    node_flags: dict[str, Any] = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in flags.items()
        if name in NodeSettings.__struct_fields__
    }
    settings = load_node_settings(
        flags.get("config"), runtime_settings=runtime_tables(flags, options), **node_flags
    )
    setup_logging(settings.log_level, settings.log_format)
    for line in node_env_problems(os.environ, click_envvars(ctx.find_root().command)):
        log.warning("config: %s", line)
    if not settings.api_key:
        raise SettingsError(NEED_A_KEY)
    check_server_cert(settings.tls_cert, settings.tls_key)
    app = create_node_app(settings)
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        drain=app.state.node_drain,
        graceful_timeout_s=900,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_limits=ClientLimits.of(settings),
    )
    return 0


RUNTIME_OPTIONS = "llmlb_node.runtime_options"


def node_command() -> click.Command:
    """``llmlb node`` with the flags of every installed runtime type. A third-party runtime that
    fails to load leaves its flags out here; ``llmlb node`` then refuses to start, naming it."""
    try:
        types = load_runtime_types()
    except RuntimePluginError:
        types = load_runtime_types(load_entry_points=False)
    options = runtime_options(types)

    def callback(**params: Any) -> int:
        click.get_current_context().meta[RUNTIME_OPTIONS] = options
        return node.callback(**params) if node.callback else 0

    return click.Command(
        name="node",
        callback=callback,
        params=[*node.params, *(option for option, _, _ in options.values())],
        help=node.help,
        short_help="Run a node that serves models to a router.",
        context_settings=CONTEXT_SETTINGS,
    )


@hookimpl
def llmlb_register_commands(cli: click.Group) -> None:
    cli.add_command(node_command())
    add_config_kind(cli, NODE)
