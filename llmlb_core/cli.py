"""The ``llmlb`` command line: the core's commands, and those plugins add.

The core has ``serve`` (the router) and ``keys create|list|revoke`` (an admin's client of
``/v0/keys``). Plugins add theirs through ``llmlb_register_commands(cli)`` (as datasette's
``register_commands``): the node's ``node``, ``demo``, ``demo-model`` and ``quantize`` come from
``llmlb_node.commands``, an entry point of the ``llmlb`` distribution, so the core imports no
node code. A bad setting or a broken plugin prints one line, ``llmlb: ...``, and exits 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click
import httpx

from llmlb_core.cli_support import default_of, given, setup_logging
from llmlb_core.plugins import PluginError, build_manager
from llmlb_core.settings import RouterSettings, SettingsError

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}
DEFAULT_ROUTER = "http://127.0.0.1:8080"


# --- serve ---------------------------------------------------------------------------------
@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default=default_of(RouterSettings, "host"), help="address to listen on")
@click.option("--port", type=int, default=default_of(RouterSettings, "port"), help="port to listen on")
@click.option(
    "--data-dir",
    default=default_of(RouterSettings, "data_dir"),
    help="keys, nodes, models and stored images",
)
@click.option("--config", help="TOML config file (or env LLMLB_CONFIG)")
@click.pass_context
def serve(ctx: click.Context, **params: Any) -> int:
    """Run the router. Settings: flags, then LLMLB_* variables, then the config file, then the
    defaults shown here."""
    from llmlb_core.app import create_app
    from llmlb_core.serving import run
    from llmlb_core.settings import load_settings
    from llmlb_core.slow_clients import ClientTimeouts
    from llmlb_core.tls import check_server_cert

    flags = given(ctx, params)
    settings = load_settings(params["config"], **{k: v for k, v in flags.items() if k != "config"})
    setup_logging(settings.log_level)
    try:
        check_server_cert(settings.tls_cert, settings.tls_key, flags="tls_cert/tls_key")
        app = create_app(settings)
    except (PluginError, SettingsError) as exc:
        print(f"llmlb: refusing to start: {exc}", file=sys.stderr)
        return 2
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_timeouts=ClientTimeouts.of(settings),
    )
    return 0


# --- keys ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdminTarget:
    router: str
    admin_key: str | None


def admin_options(command: Any) -> Any:
    """``--router`` and ``--admin-key``: on ``keys`` and on each of its commands, so they work
    before and after the command's name (``llmlb keys create x --router URL``)."""
    command = click.option("--admin-key", envvar="LLMLB_ADMIN_KEY", help="an admin-scope key")(command)
    return click.option("--router", envvar="LLMLB_ROUTER", default=DEFAULT_ROUTER, help="router URL")(command)


def _target(ctx: click.Context, router: str, admin_key: str | None) -> AdminTarget:
    """A command's own flags, where given on its command line, else those of ``keys``."""
    group: AdminTarget = ctx.find_object(AdminTarget) or AdminTarget(router, admin_key)
    own = given(ctx, {"router": router, "admin_key": admin_key})
    return AdminTarget(own.get("router", group.router), own.get("admin_key", group.admin_key))


def _admin_client(target: AdminTarget) -> httpx.Client:
    if not target.admin_key:
        raise click.UsageError("an admin key is required (--admin-key or LLMLB_ADMIN_KEY)")
    return httpx.Client(
        base_url=target.router.rstrip("/"),
        headers={"authorization": f"Bearer {target.admin_key}"},
        timeout=30,
    )


def _print_response(response: httpx.Response) -> int:
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.is_success else 1


@click.group(context_settings=CONTEXT_SETTINGS)
@admin_options
@click.pass_context
def keys(ctx: click.Context, router: str, admin_key: str | None) -> None:
    """Manage API keys (admin)."""
    ctx.obj = AdminTarget(router, admin_key)


@keys.command()
@click.argument("name")
@click.option(
    "--scope",
    multiple=True,
    type=click.Choice(["api", "node", "admin"]),
    default=["api"],
    help="scope of the key (repeatable)",
)
@click.option("--expires-in", type=float, help="lifetime in seconds (default: none)")
@click.option("--node", metavar="NODE_ID", help="bind a node-scope key to this node id")
@admin_options
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    scope: tuple[str, ...],
    expires_in: float | None,
    node: str | None,
    router: str,
    admin_key: str | None,
) -> int:
    """Create a key; its secret is printed once."""
    body: dict[str, Any] = {"name": name, "scopes": list(scope)}
    if expires_in:
        body["expires_in_s"] = expires_in
    if node:
        body["node_id"] = node
    with _admin_client(_target(ctx, router, admin_key)) as client:
        return _print_response(client.post("/v0/keys", json=body))


@keys.command(name="list")
@admin_options
@click.pass_context
def list_keys(ctx: click.Context, router: str, admin_key: str | None) -> int:
    """List keys (never their secrets)."""
    with _admin_client(_target(ctx, router, admin_key)) as client:
        return _print_response(client.get("/v0/keys"))


@keys.command()
@click.argument("key_id", metavar="ID")
@admin_options
@click.pass_context
def revoke(ctx: click.Context, key_id: str, router: str, admin_key: str | None) -> int:
    """Revoke a key by its id."""
    with _admin_client(_target(ctx, router, admin_key)) as client:
        return _print_response(client.delete(f"/v0/keys/{key_id}"))


# --- composition ---------------------------------------------------------------------------
def build_cli() -> tuple[click.Group, PluginError | None]:
    """The ``llmlb`` group: the core's commands, then every plugin's (``llmlb_register_commands``).
    A third-party plugin that fails to import is left out (and returned), so ``llmlb keys`` and
    the built-in commands keep working (``llmlb serve`` then refuses to start, naming it)."""

    @click.group(context_settings=CONTEXT_SETTINGS)
    @click.version_option(package_name="llmlb", prog_name="llmlb")
    def cli() -> None:
        """llmlb: an OpenAI-compatible load balancer for self-hosted models."""

    cli.add_command(serve)
    cli.add_command(keys)
    error: PluginError | None = None
    try:
        manager = build_manager(third_party=True)
    except PluginError as exc:
        error = exc
        manager = build_manager(third_party=False)
    manager.hook.llmlb_register_commands(cli=cli)
    return cli, error


def main(argv: list[str] | None = None) -> int:
    try:
        cli, plugin_error = build_cli()
        args = sys.argv[1:] if argv is None else argv
        if plugin_error is not None and (not args or args[0] not in cli.commands):
            # The command asked for may be the broken plugin's (`serve` names it by itself).
            print(f"llmlb: {plugin_error}; its commands are left out", file=sys.stderr)
        result = cli.main(args=args, prog_name="llmlb", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 130
    except (SettingsError, PluginError) as exc:  # e.g. a --name outside the node-name charset
        print(f"llmlb: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
