"""``llmlb config check`` for a node's config file (``llmlb node --config FILE``): the node's
settings and each ``[runtime.<name>]`` table against its runtime's settings type, every problem
one line; warnings for unknown ``LLMLB_NODE_*`` variables, tables no runtime reads, a missing
key, or a missing models folder when a runtime the node would start needs one
(``RuntimeType.needs_models_dir``). Registered with the core's ``llmlb config`` group by
``llmlb_node.commands``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from llmlb_core.cli.config_check import ConfigKind, Report, lenient
from llmlb_core.config.problems import near_miss, table_problems
from llmlb_core.config.settings import SettingsError, lists_from_text
from llmlb_core.server.tls import check_server_cert
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from llmlb_node.settings import (
    ENV_PREFIX,
    RUNTIME_ENV_PREFIX,
    NodeSettings,
    node_env_problems,
    raw_node_settings,
    shown_table,
)


def check_node(path: Path, environ: Mapping[str, str], cli_envvars: set[str]) -> Report:
    report = Report(warnings=node_env_problems(environ, cli_envvars))
    raw = raw_node_settings(path, environ=environ)
    report.problems += table_problems(
        shown_table(raw), NodeSettings, noun="node setting", env_prefix=ENV_PREFIX, skip={"runtime"}
    )
    tables = raw.get("runtime", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        report.problems.append("[runtime] must hold one table per runtime: [runtime.<name>]")
        return report
    # The runtimes' tables are checked even when a node setting is wrong.
    try:
        settings = msgspec.convert(raw, NodeSettings, strict=False)
    except msgspec.ValidationError:
        settings = lenient(raw, NodeSettings, ("runtimes", "models_dir", "api_key"))
    try:
        if not report.problems:
            check_server_cert(settings.tls_cert, settings.tls_key)
        types = load_runtime_types()
    except (SettingsError, RuntimePluginError) as exc:
        report.problems.append(str(exc))
        return report
    unknown = [name for name in settings.runtimes if name not in types]
    if unknown:
        report.problems.append(f"runtimes: unknown runtime(s) {unknown}; installed: {sorted(types)}")
    effective = msgspec.to_builtins(settings)
    effective["runtime"] = {}
    for name, table in sorted(tables.items()):
        if name not in types:
            installed = ", ".join(sorted(types))
            report.warnings.append(
                f"no installed runtime reads [runtime.{name}]; ignored{near_miss(name, types)} "
                f"(installed: {installed})"
            )
            continue
        struct = types[name].settings
        table = lists_from_text(table, struct)
        where, env_prefix = f"[runtime.{name}]", f"{RUNTIME_ENV_PREFIX}{name.upper()}__"
        problems = table_problems(table, struct, where=where, env_prefix=env_prefix)
        report.problems += problems
        if not problems:
            effective["runtime"][name] = msgspec.to_builtins(msgspec.convert(table, struct, strict=False))
    if not settings.api_key:
        report.warnings.append("no api_key: give the node's key with --api-key or LLMLB_API_KEY")
    started = [types[name] for name in settings.runtimes or types if name in types]
    if not settings.models_path.is_dir() and any(t.needs_models_dir for t in started):
        report.warnings.append(
            f"models_dir {settings.models_dir} is not a folder "
            "(`llmlb demo-model DIR/demo` writes a demo model there)"
        )
    if not report.problems:
        report.effective = effective
    return report


NODE = ConfigKind(
    name="node",
    keys=frozenset(f.encode_name for f in msgspec.structs.fields(NodeSettings)),
    check=check_node,
)
