"""Config as an operator meets it: ``llmlb config check FILE`` for router and node files (every
problem one line, exit 2; else the effective settings as TOML, secrets masked, exit 0), warnings
for ``LLMLB_*`` / ``LLMLB_NODE_*`` variables nothing reads, and ``--log-level`` / ``--log-format``
on ``serve`` and ``node``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from llmlb_core.cli.main import main
from tests.support.cli_runs import run_cli
from tests.support.servers import ADMIN_KEY, Proc, base_env, free_port, wait_until

BAD_ROUTER = """\
port = "many"
queue_mx = 3
log_format = "xml"

[plugin.images]
size_fallback = "yes"
url_ttl_minutes = -1

[plugin.imagse]
size_fallback = true
"""

GOOD_ROUTER = """\
port = 9000
admin_key = "sk-llmlb-secret-admin-key-0123456789"
capabilities = ["text", "images"]

[plugin.images]
size_fallback = true
"""

NODE = """\
router_url = "http://router.internal:8080"
port = 8091
models_dir = "{models}"
api_key = "sk-llmlb-node-secret-0123456789"

[runtime.stable_diffusion]
threads = {threads}

[runtime.stable_difusion]
threads = 2
"""


def test_a_bad_router_config_gets_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(BAD_ROUTER)
    result = run_cli("config", "check", str(config), cwd=tmp_path)
    assert result.code == 2 and result.out == "" and "Traceback" not in result.err
    lines = result.err_lines
    assert lines[0] == f"llmlb: checking {config} as a router config (keys only a router config has: plugin)"
    assert lines[1].startswith(
        "llmlb: warning: no installed capability reads [plugin.imagse]; ignored (did you mean images?) "
        "(installed: "
    )
    assert lines[2:] == [
        f"llmlb: {config}: invalid setting port (env LLMLB_PORT): expected an integer, got 'many'",
        f"llmlb: {config}: unknown setting queue_mx (env LLMLB_QUEUE_MX; did you mean queue_max?)",
        f"llmlb: {config}: invalid setting log_format (env LLMLB_LOG_FORMAT): expected one of 'json', "
        "'text', got 'xml'",
        f"llmlb: {config}: invalid setting [plugin.images] size_fallback "
        "(env LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK): expected true or false, got 'yes'",
        f"llmlb: {config}: invalid setting [plugin.images] url_ttl_minutes "
        "(env LLMLB_PLUGIN__IMAGES__URL_TTL_MINUTES): expected a number > 0.0, got -1",
        f"llmlb: {config}: 5 problem(s); the router would not start",
    ]


def test_a_good_router_config_prints_the_effective_settings_with_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "router.toml"
    config.write_text(GOOD_ROUTER)
    monkeypatch.setenv("LLMLB_QUEUE_MAX", "7")
    monkeypatch.setenv("LLMLB_PROT", "9001")
    assert main(["config", "check", str(config)]) == 0
    captured = capsys.readouterr()
    effective = tomllib.loads(captured.out)
    assert (effective["port"], effective["queue_max"], effective["admin_key"]) == (9000, 7, "***")
    assert "sk-llmlb-secret" not in captured.out
    assert effective["capabilities"] == ["text", "images"] and "public_url" not in effective
    assert effective["plugin"]["images"]["size_fallback"] is True
    assert effective["plugin"]["images"]["url_ttl_minutes"] == 60.0  # the plugin's defaults, filled in
    assert set(effective["plugin"]) == {"text", "images"}  # the enabled capabilities
    assert "llmlb: warning: unknown environment variable LLMLB_PROT ignored (did you mean LLMLB_PORT?)" in (
        captured.err.splitlines()
    )
    assert (
        captured.err.splitlines()[-1]
        == f"llmlb: {config}: OK (router config; the effective settings are above)"
    )
    # --no-env: the file alone.
    assert main(["config", "check", "--no-env", str(config)]) == 0
    captured = capsys.readouterr()
    assert tomllib.loads(captured.out)["queue_max"] == 100 and "LLMLB_PROT" not in captured.err


def test_database_url_is_checked_and_shown_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "router.toml"
    config.write_text("port = 9000\n")
    monkeypatch.setenv("LLMLB_DATABASE_URL", "postgresql://llmlb:pw-secret@db:5432/llmlb?sslmode=require")
    assert main(["config", "check", str(config)]) == 0
    captured = capsys.readouterr()
    assert (
        tomllib.loads(captured.out)["database_url"] == "postgresql://llmlb:***@db:5432/llmlb?sslmode=require"
    )
    assert "pw-secret" not in captured.out + captured.err
    monkeypatch.setenv("LLMLB_DATABASE_URL", "mysql://llmlb:pw-secret@db/llmlb")
    assert main(["config", "check", str(config)]) == 2
    captured = capsys.readouterr()
    assert f"llmlb: {config}: database_url 'mysql://llmlb:***@db/llmlb': expected empty" in captured.err
    assert "pw-secret" not in captured.out + captured.err


def test_a_node_config_is_told_by_its_keys_and_its_runtime_tables_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LLMLB_API_KEY", "LLMLB_NODE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMLB_NODE_PROT", "1")
    monkeypatch.setenv("LLMLB_NODE_THREADS", "1")  # a runtime flag's variable: known
    monkeypatch.setenv("LLMLB_NODE_TIMEOUT_S", "5")  # the router's: known
    config = tmp_path / "node.toml"
    config.write_text(NODE.format(models=tmp_path, threads='"many"'))
    assert main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"llmlb: checking {config} as a node config (keys only a node config has: api_key, models_dir, "
        "router_url, runtime)"
    )
    assert (
        "llmlb: warning: unknown environment variable LLMLB_NODE_PROT ignored (did you mean LLMLB_NODE_PORT?)"
        in err
    )
    assert not any("LLMLB_NODE_THREADS" in line or "LLMLB_NODE_TIMEOUT_S" in line for line in err)
    assert (
        "llmlb: warning: no installed runtime reads [runtime.stable_difusion]; ignored "
        "(did you mean stable_diffusion?) (installed: openai_compatible, stable_diffusion)"
    ) in err
    assert err[-2:] == [
        f"llmlb: {config}: invalid setting [runtime.stable_diffusion] threads "
        "(env LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__THREADS): expected an integer, got 'many'",
        f"llmlb: {config}: 1 problem(s); the node would not start",
    ]
    config.write_text(NODE.format(models=tmp_path, threads=3))
    assert main(["config", "check", "--node", str(config)]) == 0
    captured = capsys.readouterr()
    effective = tomllib.loads(captured.out)
    assert (effective["router_url"], effective["port"], effective["api_key"]) == (
        "http://router.internal:8080",
        8091,
        "***",
    )
    assert effective["runtime"]["stable_diffusion"]["threads"] == 3
    assert effective["runtime"]["stable_diffusion"]["idle_unload_s"] == 600.0
    # Checked as a router's, the node's keys are unknown settings.
    assert main(["config", "check", "--router", "--no-env", str(config)]) == 2
    assert "unknown setting router_url" in capsys.readouterr().err


def test_a_config_file_that_cannot_be_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    assert main(["config", "check", str(broken)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"llmlb: cannot read config {broken}: ")
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"llmlb: cannot read config {tmp_path / 'missing.toml'}: ")


def test_serve_logs_at_its_log_level_and_format_and_warns_of_unknown_variables(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    router = Proc(
        args=["serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--log-format", "json"],
        env=base_env(
            LLMLB_LOG_LEVEL="debug",
            LLMLB_ADMIN_KEY=ADMIN_KEY,
            LLMLB_PROT="9",
            LLMLB_PLUGIN__IMAGES_SIZE_FALLBACK="true",  # one "__" short
            LLMLB_NODE_PORT="8095",  # the node's: not the router's to flag
            LLMLB_ROUTER="http://x",  # the CLI's
        ),
        log_path=tmp_path / "router.log",
        url=f"http://127.0.0.1:{port}",
    )
    procs.append(router)
    router.start().wait_healthy()
    # At debug level: the /health calls of wait_healthy are logged (after their answers).
    wait_until(lambda: any(r["level"] == "DEBUG" for r in _json_records(router.log())), 10, "a debug line")
    lines = [line for line in router.log().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), router.log()
    records = [json.loads(line) for line in lines]
    warnings = [r["message"] for r in records if r["level"] == "WARNING" and r["logger"] == "llmlb.config"]
    assert warnings == [
        "config: unknown environment variable LLMLB_PLUGIN__IMAGES_SIZE_FALLBACK ignored",
        "config: unknown environment variable LLMLB_PROT ignored (did you mean LLMLB_PORT?)",
    ]


def _json_records(log: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{") and line.endswith("}")]


def test_node_log_level_and_key_mistakes_are_one_line(tmp_path: Path) -> None:
    bad_level = run_cli("node", "--api-key", "k", cwd=tmp_path, env={"LLMLB_NODE_LOG_LEVEL": "verbose"})
    assert bad_level.code == 2
    assert bad_level.err_lines == [
        "llmlb: invalid node setting log_level (env LLMLB_NODE_LOG_LEVEL): expected one of debug, info, "
        "warning, error, critical, got 'verbose'"
    ]
    no_key = run_cli("node", "--log-level", "warning", cwd=tmp_path, env={"LLMLB_NODE_PROT": "1"})
    assert no_key.code == 2
    [warning, line] = no_key.err_lines
    assert warning.endswith(
        "WARNING llmlb.config: config: unknown environment variable LLMLB_NODE_PROT ignored "
        "(did you mean LLMLB_NODE_PORT?)"
    )
    assert line == (
        "llmlb: llmlb node needs a node-scope API key: pass --api-key or set LLMLB_API_KEY "
        "(an admin makes one with `llmlb keys create NAME --scope node`)"
    )


def test_a_missing_models_dir_is_a_warning_only_for_runtimes_that_need_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    missing = tmp_path / "no-models"
    front = f'models_dir = "{missing}"\napi_key = "sk-llmlb-node-secret-0123456789"\n'
    config.write_text(front + 'runtimes = ["openai_compatible"]\n')
    assert main(["config", "check", "--node", "--no-env", str(config)]) == 0
    assert "is not a folder" not in capsys.readouterr().err  # it fronts a server: no files
    config.write_text(front)  # every installed runtime, stable_diffusion among them
    assert main(["config", "check", "--node", "--no-env", str(config)]) == 0
    assert f"models_dir {missing} is not a folder" in capsys.readouterr().err
