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
from collections.abc import Mapping
from typing import Any

import click

from llmlb_core.api import hookimpl
from llmlb_core.cli_support import default_of, given, setup_logging
from llmlb_core.settings import SettingsError
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from llmlb_node.runtime import RuntimeType
from llmlb_node.settings import NodeSettings

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}


def node_default(field: str) -> str | None:
    return default_of(NodeSettings, field)


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


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--router", default=node_default("router_url"), help="router URL")
@click.option("--host", default=node_default("host"), help="address to listen on")
@click.option("--port", type=int, default=node_default("port"), help="port to listen on")
@click.option("--advertise-host", help="address the router uses to reach this node (default: --host)")
@click.option("--models-dir", default=node_default("models_dir"), help="one folder per model")
@click.option("--api-key", help="node-scope key (or env LLMLB_API_KEY)")
@click.option("--name", help="name shown in /v0/nodes and logs (default: <hostname>-<port>)")
@click.option("--node-id", help="stable node id (default: <hostname>-<port>-<random>, new every start)")
@click.option(
    "--runtime",
    multiple=True,
    help="runtime type to start (repeatable; default: every installed one with something to serve)",
)
@click.option("--heartbeat-interval", type=float, help="seconds (default: what the router asks for)")
@click.option(
    "--config", help="TOML node config: node settings and [runtime.<name>] tables (or env LLMLB_NODE_CONFIG)"
)
@click.option("--log-level", default="info", help="debug, info, warning, error")
@click.option("--tls-cert", help="serve HTTPS with this PEM certificate (or env LLMLB_NODE_TLS_CERT)")
@click.option("--tls-key", help="private key of --tls-cert (or env LLMLB_NODE_TLS_KEY)")
@click.option("--router-ca-bundle", help="PEM CA bundle to verify an HTTPS router against")
def node(**params: Any) -> int:
    """Run a node that serves models to a router."""
    ctx = click.get_current_context()
    options: dict[str, tuple[click.Option, str, str]] = ctx.meta.get(RUNTIME_OPTIONS, {})
    from llmlb_core.serving import run
    from llmlb_core.slow_clients import ClientTimeouts
    from llmlb_core.tls import check_server_cert
    from llmlb_node.app import create_node_app
    from llmlb_node.settings import load_node_settings

    flags = given(ctx, params)
    settings = load_node_settings(
        flags.get("config"),
        router_url=flags.get("router"),
        port=flags.get("port"),
        host=flags.get("host"),
        models_dir=flags.get("models_dir"),
        api_key=flags.get("api_key"),
        name=flags.get("name"),
        node_id=flags.get("node_id"),
        advertise_host=flags.get("advertise_host"),
        heartbeat_interval_s=flags.get("heartbeat_interval"),
        runtimes=list(flags.get("runtime", ())) or None,
        tls_cert=flags.get("tls_cert"),
        tls_key=flags.get("tls_key"),
        router_ca_bundle=flags.get("router_ca_bundle"),
        runtime_settings=runtime_tables(flags, options),
    )
    setup_logging(params["log_level"])
    if not settings.api_key:
        raise SettingsError("llmlb node needs a node-scope API key (--api-key or LLMLB_API_KEY)")
    check_server_cert(settings.tls_cert, settings.tls_key)
    app = create_node_app(settings)
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=params["log_level"],
        drain=app.state.node_drain,
        graceful_timeout_s=900,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_timeouts=ClientTimeouts.of(settings),
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
        context_settings=CONTEXT_SETTINGS,
    )


@hookimpl
def llmlb_register_commands(cli: click.Group) -> None:
    cli.add_command(node_command())
