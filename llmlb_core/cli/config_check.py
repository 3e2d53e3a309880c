"""``llmlb config check FILE``: read a router or node config file as ``llmlb serve --config FILE``
or ``llmlb node --config FILE`` would (with the environment's ``LLMLB_*`` variables, unless
``--no-env``), and report every problem in one line each (exit 2), or print the effective
settings as TOML (exit 0). Secrets are masked; warnings (unknown variables, tables that nothing
reads) go to stderr and do not fail the check.

The core checks router configs; plugins add kinds (:func:`add_config_kind`: the node's comes
from ``llmlb_node.commands``). Which kind FILE is, is told by the keys only one kind has
(``[runtime.*]``, ``models_dir``, ``router_url``... are a node's; ``[plugin.*]``, ``data_dir``,
``queue_max``... a router's), or by ``--node`` / ``--router``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from llmlb_core.cli.support import CONTEXT_SETTINGS, OperatorError, click_envvars
from llmlb_core.config.problems import near_miss, table_problems
from llmlb_core.config.settings import (
    ENV_PREFIX,
    RouterSettings,
    SettingsError,
    lists_from_text,
    raw_settings,
    read_toml,
    router_env_problems,
)
from llmlb_core.storage.urls import parse_database_url, redact_url

T = TypeVar("T")
SECRETS = frozenset({"admin_key", "secret_key", "api_key"})
SECRET_URLS = frozenset({"database_url", "redis_url"})  # shown with the password masked


@dataclass
class Report:
    """What a check found: problems (the config would not start), warnings, the effective
    settings (when there is no problem)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    effective: dict[str, Any] = field(default_factory=dict)


Checker = Callable[[Path, Mapping[str, str], set[str]], Report]


@dataclass(frozen=True)
class ConfigKind:
    """A kind of config file ``llmlb config check`` knows: its top-level keys (to tell it from
    the others) and its check (file, environment, the command line's variables) -> report."""

    name: str
    keys: frozenset[str]
    check: Checker


class ConfigGroup(click.Group):
    """``llmlb config``, with the kinds of config it checks."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.kinds: dict[str, ConfigKind] = {}


def add_config_kind(cli: click.Group, kind: ConfigKind) -> None:
    """Let ``llmlb config check`` check ``kind`` (from a plugin's ``llmlb_register_commands``)."""
    group = cli.commands.get("config")
    if isinstance(group, ConfigGroup):
        group.kinds[kind.name] = kind


def guess_kind(table: Mapping[str, Any], kinds: Mapping[str, ConfigKind]) -> tuple[str, str]:
    """The kind whose own keys (those no other kind has) ``table`` uses most, and why; the
    router's when none."""
    best: tuple[int, bool, str, list[str]] = (0, True, "router", [])
    for kind in kinds.values():
        others: set[str] = set().union(*(k.keys for k in kinds.values() if k is not kind))
        own = sorted(key for key in table if key in kind.keys - others)
        best = max(best, (len(own), kind.name == "router", kind.name, own))
    count, _, name, own = best
    if not count:
        return "router", "no key that only one kind has; --node or --router to choose"
    return name, f"keys only a {name} config has: {', '.join(own)}"


# --- the router's check --------------------------------------------------------------------
def check_router(path: Path, environ: Mapping[str, str], cli_envvars: set[str]) -> Report:
    from llmlb_core.plugins import PluginError, load_plugins
    from llmlb_core.server.credentials import admin_key_problem
    from llmlb_core.server.tls import check_server_cert

    report = Report(warnings=router_env_problems(environ, cli_envvars))
    raw = raw_settings(path, environ=environ)
    report.problems += table_problems(raw, RouterSettings, env_prefix=ENV_PREFIX, skip={"plugin"})
    tables = raw.get("plugin", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        report.problems.append("[plugin] must hold one table per plugin: [plugin.<name>]")
        return report
    # The plugins' tables are checked even when a top-level key is wrong (with the default
    # capabilities and entry points where those keys are the wrong ones).
    try:
        settings = msgspec.convert(raw, RouterSettings, strict=False)
    except msgspec.ValidationError:
        settings = lenient(raw, RouterSettings, ("capabilities", "load_entry_points"))
    admin_key = admin_key_problem(settings.admin_key) if settings.admin_key else None
    if admin_key is not None:
        report.problems.append(admin_key)
    try:
        parse_database_url(settings.database_url, settings.data_path)
    except SettingsError as exc:
        report.problems.append(str(exc))
    try:
        if not report.problems:
            check_server_cert(settings.tls_cert, settings.tls_key, flags="tls_cert/tls_key")
        plugins = load_plugins(settings.capabilities, third_party=settings.load_entry_points)
    except (SettingsError, PluginError) as exc:
        report.problems.append(str(exc))
        return report
    for name in sorted(tables):
        if name not in plugins.capabilities:
            installed = ", ".join(sorted(plugins.capabilities))
            report.warnings.append(
                f"no installed capability reads [plugin.{name}]; ignored"
                f"{near_miss(name, plugins.capabilities)} (installed: {installed})"
            )
        elif name not in plugins.enabled:
            report.warnings.append(f"[plugin.{name}] is ignored: capability {name} is not enabled")
    effective = msgspec.to_builtins(settings)
    effective["plugin"] = {}
    for name in plugins.enabled:
        struct = plugins.capabilities[name].settings
        table = lists_from_text(tables.get(name, {}), struct)
        where, env_prefix = f"[plugin.{name}]", f"{ENV_PREFIX}PLUGIN__{name.upper()}__"
        problems = table_problems(table, struct, where=where, env_prefix=env_prefix)
        report.problems += problems
        if not problems:
            effective["plugin"][name] = msgspec.to_builtins(msgspec.convert(table, struct, strict=False))
    if not report.problems:
        report.effective = effective
    return report


def lenient(raw: Mapping[str, Any], struct: type[T], keys: Iterable[str]) -> T:
    """``struct`` from those of ``keys`` in ``raw`` that convert, defaults for the others."""
    table: dict[str, Any] = {}
    for key in keys:
        if key in raw:
            try:
                msgspec.convert({key: raw[key]}, struct, strict=False)
            except msgspec.ValidationError:
                continue
            table[key] = raw[key]
    return msgspec.convert(table, struct, strict=False)


# --- output --------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a TOML basic string


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def toml_text(table: Mapping[str, Any], prefix: str = "") -> str:
    """``table`` as TOML: plain keys first, then a ``[section]`` per sub-table; None is shown as
    a comment (unset), secrets masked."""
    lines: list[str] = []
    subtables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values()) and value:
            subtables += [(f"{prefix}{key}.{name}", sub) for name, sub in value.items()]
        elif isinstance(value, Mapping) and not value and not prefix:
            continue  # no [plugin.*] / [runtime.*] tables
        elif value is None:
            lines.append(f"# {_toml_key(key)} = (unset)")
        else:
            shown = '"***"' if key in SECRETS else _toml_value(value)
            if key in SECRET_URLS and isinstance(value, str):
                shown = _toml_value(redact_url(value))
            lines.append(f"{_toml_key(key)} = {shown}")
    for name, sub in subtables:
        lines += ["", f"[{name}]", toml_text(sub, f"{name}.")]
    return "\n".join(line for line in lines if line or lines)


ROUTER = ConfigKind(
    name="router",
    keys=frozenset(f.encode_name for f in msgspec.structs.fields(RouterSettings)),
    check=check_router,
)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--node/--router",
    "as_node",
    default=None,
    help="check FILE as a node's config / a router's  [default: told by its keys]",
)
@click.option("--env/--no-env", default=True, help="apply the LLMLB_* variables, as a start would")
@click.pass_context
def check(ctx: click.Context, file: Path, as_node: bool | None, env: bool) -> int:
    """Check a router or node config file: every problem in one line each (exit 2), or the
    effective settings as TOML (exit 0)."""
    kinds: dict[str, ConfigKind] = getattr(ctx.parent.command if ctx.parent else None, "kinds", {})
    try:
        table = read_toml(file)
    except SettingsError as exc:
        raise OperatorError(str(exc)) from None
    if as_node is None:
        name, why = guess_kind(table, kinds)
        print(f"llmlb: checking {file} as a {name} config ({why})", file=sys.stderr)
    else:
        name = "node" if as_node else "router"
    if name not in kinds:
        raise OperatorError(f"cannot check a {name} config: no installed plugin knows that kind")
    environ = dict(os.environ) if env else {}
    report = kinds[name].check(file, environ, click_envvars(ctx.find_root().command))
    for warning in report.warnings:
        print(f"llmlb: warning: {warning}", file=sys.stderr)
    if report.problems:
        for problem in report.problems:
            print(f"llmlb: {file}: {problem}", file=sys.stderr)
        count = len(report.problems)
        print(f"llmlb: {file}: {count} problem(s); the {name} would not start", file=sys.stderr)
        return 2
    print(toml_text(report.effective))
    print(f"llmlb: {file}: OK ({name} config; the effective settings are above)", file=sys.stderr)
    return 0


def config_group() -> ConfigGroup:
    """A new ``llmlb config`` group that checks router configs (plugins add kinds)."""
    group = ConfigGroup(
        name="config",
        help="Check router and node config files.",
        short_help="Check router and node config files.",
        context_settings=CONTEXT_SETTINGS,
    )
    group.add_command(check)
    group.kinds[ROUTER.name] = ROUTER
    return group
