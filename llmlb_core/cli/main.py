"""The ``llmlb`` command line: the core's commands, and those plugins add.

The core has ``serve`` (the router), the admin's ``keys``, ``models`` and ``nodes``
(:mod:`llmlb_core.cli.admin`), ``config check`` (:mod:`llmlb_core.cli.config_check`) and
``db copy`` (:mod:`llmlb_core.cli.db`). Plugins add theirs through
``llmlb_register_commands(cli)`` (as datasette's ``register_commands``): the node's ``node``,
``demo``, ``demo-model`` and ``quantize`` come from ``llmlb_node.commands``, an entry point of
the ``llmlb`` distribution, so the core imports no node code.

An ordinary mistake (a bad setting, a broken plugin, a router that is down, a refused key, a
taken port) prints one line, ``llmlb: ...``, saying what to do next, and exits 2 (1 for a
failure at the other end); ``--debug`` (anywhere on the line, or ``LLMLB_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from llmlb_core.cli.admin import ADMIN_COMMANDS
from llmlb_core.cli.config_check import config_group
from llmlb_core.cli.db import db_group
from llmlb_core.cli.support import (
    CONTEXT_SETTINGS,
    LOG_LEVEL_CHOICE,
    OperatorError,
    click_envvars,
    given,
    settings_option,
    setup_logging,
)
from llmlb_core.config.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    RouterSettings,
    SettingsError,
    load_settings,
    router_env_problems,
)
from llmlb_core.plugins import PluginError, build_manager

log = logging.getLogger("llmlb.config")
DEBUG_FLAG = "--debug"
DEBUG_ENV = "LLMLB_DEBUG"


def router_option(*decls: str, field: str, help: str, **attrs: Any) -> Any:
    return settings_option(
        *decls, struct=RouterSettings, field=field, env_prefix=ENV_PREFIX, help=help, **attrs
    )


# --- serve ---------------------------------------------------------------------------------
@click.command(context_settings=CONTEXT_SETTINGS, short_help="Run the router.")
@router_option("--host", field="host", help="address to listen on")
@router_option("--port", field="port", type=int, help="port to listen on")
@router_option("--data-dir", field="data_dir", help="where keys, nodes, models and stored images live")
@router_option(
    "--database-url",
    field="database_url",
    help="keys, nodes, models, endpoints: unset, SQLite in data_dir; postgresql://user:pw@host/db",
)
@router_option(
    "--redis-url",
    field="redis_url",
    help="live state shared by several routers (nodes, slots, revocations): redis://host:port/0",
)
@router_option("--log-level", field="log_level", type=LOG_LEVEL_CHOICE, help="least severe log level shown")
@router_option(
    "--log-format",
    field="log_format",
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object per line (for log shippers)",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help=f"TOML config file (check one with `llmlb config check FILE`)  [env var: {CONFIG_ENV}]",
)
@click.pass_context
def serve(ctx: click.Context, **params: Any) -> int:
    """Run the router.

    Each setting is taken from its flag, else its LLMLB_* variable, else the config file, else
    the default shown here. Every setting, its variable and its TOML key: docs/configuration.md.
    """
    from llmlb_core.router.app import create_app
    from llmlb_core.server.serving import run
    from llmlb_core.server.slow_clients import ClientLimits
    from llmlb_core.server.tls import check_server_cert

    flags = given(ctx, params)
    settings = load_settings(flags.pop("config", None), **flags)
    setup_logging(settings.log_level, settings.log_format)
    for line in router_env_problems(os.environ, click_envvars(ctx.find_root().command)):
        log.warning("config: %s", line)
    try:
        check_server_cert(settings.tls_cert, settings.tls_key, flags="tls_cert/tls_key")
        app = create_app(settings)
    except (PluginError, SettingsError) as exc:
        raise OperatorError(f"refusing to start: {exc}") from exc
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_limits=ClientLimits.of(settings),
    )
    return 0


# --- composition ---------------------------------------------------------------------------
def build_cli() -> tuple[click.Group, PluginError | None]:
    """The ``llmlb`` group: the core's commands, then every plugin's (``llmlb_register_commands``).
    A third-party plugin that fails to import is left out (and returned), so ``llmlb keys`` and
    the built-in commands keep working (``llmlb serve`` then refuses to start, naming it)."""

    @click.group(
        context_settings=CONTEXT_SETTINGS,
        epilog="Every setting, its LLMLB_* variable and its TOML key: docs/configuration.md.",
    )
    @click.version_option(package_name="llmlb", prog_name="llmlb")
    @click.option(
        DEBUG_FLAG,
        is_flag=True,
        envvar=DEBUG_ENV,
        show_envvar=True,
        help="show the traceback of an error (may be given anywhere on the line)",
    )
    def cli(debug: bool) -> None:
        """llmlb: an OpenAI-compatible load balancer for self-hosted models.

        Start a router with `llmlb serve` and nodes that serve models to it with `llmlb node`,
        or both at once, with a synthetic model, with `llmlb demo`. The admin commands (keys,
        models, nodes) talk to a running router: --router or LLMLB_ROUTER, and --admin-key or
        LLMLB_ADMIN_KEY. `llmlb COMMAND --help` shows a command's options and their defaults.
        """

    cli.add_command(serve)
    for command in ADMIN_COMMANDS:
        cli.add_command(command)
    cli.add_command(config_group())
    cli.add_command(db_group())
    error: PluginError | None = None
    try:
        manager = build_manager(third_party=True)
    except PluginError as exc:
        error = exc
        manager = build_manager(third_party=False)
    manager.hook.llmlb_register_commands(cli=cli)
    return cli, error


def _debug_args(args: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` taken from anywhere on the line (or ``LLMLB_DEBUG``), given to the group."""
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}
    rest = [arg for arg in args if arg != DEBUG_FLAG]
    return debug, [DEBUG_FLAG, *rest] if DEBUG_FLAG in args else rest


def main(argv: list[str] | None = None) -> int:
    debug, args = _debug_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cli, plugin_error = build_cli()
        command = next((arg for arg in args if not arg.startswith("-")), None)
        if plugin_error is not None and command not in cli.commands:
            # The command asked for may be the broken plugin's (`serve` names it by itself).
            print(f"llmlb: {plugin_error}; its commands are left out", file=sys.stderr)
        result = cli.main(args=args, prog_name="llmlb", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # a plugin's command's error: one line, as ours
        if debug:
            raise
        print(f"llmlb: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("Aborted!", file=sys.stderr)
        return 130
    except OperatorError as exc:
        if debug:
            raise
        print(f"llmlb: {exc}", file=sys.stderr)
        return exc.exit_code
    except (SettingsError, PluginError) as exc:  # e.g. a --name outside the node-name charset
        if debug:
            raise
        print(f"llmlb: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"llmlb: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
