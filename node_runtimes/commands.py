"""The node's commands, added to ``llmlb`` through the core's ``llmlb_register_commands`` hook
(this module is the ``node`` entry point of the ``llmlb.plugins`` group): ``llmlb node``, and
the stable_diffusion runtime's ``demo``, ``demo-model`` and ``quantize``.

``llmlb node`` builds :class:`~llmlb_node.settings.NodeSettings` from its flags, the
``LLMLB_NODE_*`` variables and an optional TOML file; the flags of a runtime (``--upstream*``
for openai_compatible, ``--threads``, ``--idle-unload``, ``--weights`` for stable_diffusion)
set keys of that runtime's table (:data:`RUNTIME_FLAGS`), which the runtime converts itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from llmlb_core.api import KINDS, hookimpl
from llmlb_core.cli_support import default_of, given, setup_logging
from llmlb_core.settings import SettingsError
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings
from llmlb_node.settings import NodeSettings
from llmlb_node.stable_diffusion.commands import COMMANDS as STABLE_DIFFUSION_COMMANDS
from llmlb_node.stable_diffusion.settings import StableDiffusionSettings

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}
UPSTREAM = "openai_compatible"
SD = "stable_diffusion"
# `llmlb node` flags that set a key of a runtime's table: parameter -> (runtime, key).
RUNTIME_FLAGS: dict[str, tuple[str, str]] = {
    "upstream": (UPSTREAM, "url"),
    "upstream_key": (UPSTREAM, "api_key"),
    "upstream_kind": (UPSTREAM, "kind"),
    "upstream_model": (UPSTREAM, "models"),
    "upstream_capability": (UPSTREAM, "capabilities"),
    "upstream_slots": (UPSTREAM, "slots"),
    "threads": (SD, "threads"),
    "idle_unload": (SD, "idle_unload_s"),
    "weights": (SD, "weights_preference"),
}


def node_default(field: str) -> str | None:
    return default_of(NodeSettings, field)


def runtime_tables(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The runtime flags in ``params`` as per-runtime tables (repeated flags as lists)."""
    tables: dict[str, dict[str, Any]] = {}
    for param, (runtime, key) in RUNTIME_FLAGS.items():
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
@click.option("--upstream", metavar="URL", help="openai_compatible: front this OpenAI-compatible server")
@click.option(
    "--upstream-key", envvar="LLMLB_UPSTREAM_KEY", help="openai_compatible: the key the server wants"
)
@click.option(
    "--upstream-kind",
    type=click.Choice(KINDS),
    default=default_of(OpenAICompatibleSettings, "kind"),
    help="openai_compatible: kind of server",
)
@click.option("--upstream-model", multiple=True, help="openai_compatible: serve only this model (repeatable)")
@click.option(
    "--upstream-capability",
    multiple=True,
    help="openai_compatible: flag of its models (repeatable; default: the router assigns them)",
)
@click.option(
    "--upstream-slots",
    type=int,
    default=default_of(OpenAICompatibleSettings, "slots"),
    help="openai_compatible: requests sent to it at once",
)
@click.option(
    "--threads",
    type=int,
    envvar="LLMLB_NODE_THREADS",
    default=default_of(StableDiffusionSettings, "threads"),
    help="stable_diffusion: threads (0: all cores)",
)
@click.option(
    "--idle-unload",
    type=float,
    envvar="LLMLB_NODE_IDLE_UNLOAD_S",
    default=default_of(StableDiffusionSettings, "idle_unload_s"),
    help="stable_diffusion: unload a model idle this many seconds (0: never)",
)
@click.option(
    "--weights",
    type=click.Choice(["auto", "safetensors", "gguf"]),
    envvar="LLMLB_NODE_WEIGHTS_PREFERENCE",
    default=default_of(StableDiffusionSettings, "weights_preference"),
    help="stable_diffusion: weights format when a model folder holds several",
)
@click.pass_context
def node(ctx: click.Context, **params: Any) -> int:
    """Run a node that serves models to a router."""
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
        runtime_settings=runtime_tables(flags),
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


@hookimpl
def llmlb_register_commands(cli: click.Group) -> None:
    cli.add_command(node)
    for command in STABLE_DIFFUSION_COMMANDS:
        cli.add_command(command)
