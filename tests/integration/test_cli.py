"""The ``llmlb`` command line: click, the core's commands plus those of plugins (``node`` and
the stable_diffusion commands come through ``llmlb_register_commands``), defaults and variables
shown in ``--help``, options after the command's name, and one line and exit 2 for a bad setting
(the admin commands: tests/integration/test_cli_admin.py; config: test_cli_config.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb_core.cli.main import main
from tests.support.cli_runs import run_cli
from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, free_port


@pytest.fixture
def router(tmp_path: Path) -> Iterator[ThreadServer]:
    server = start_router(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


def test_version_and_help_list_the_plugins_commands_and_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    assert "llmlb, version" in capsys.readouterr().out
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    commands = ("serve", "keys", "models", "nodes", "config", "node", "demo", "demo-model", "quantize")
    for command in commands:
        assert f"\n  {command} " in listed
    assert "``" not in listed and "..." not in listed.split("Commands:")[1]  # no RST, no cut summary
    assert "LLMLB_ROUTER" in listed and "LLMLB_ADMIN_KEY" in listed and "--debug" in listed
    assert main(["node", "--help"]) == 0
    node_help = " ".join(capsys.readouterr().out.split())
    for shown in (
        "[default: 8090]",
        "[default: ./models]",
        "[env var: LLMLB_NODE_PORT]",
        "[env var: LLMLB_API_KEY or LLMLB_NODE_API_KEY]",
        "[default: INFO]",
        "--log-format [text|json]",
        "env var: LLMLB_NODE_THREADS",
        "--upstream-kind",
    ):
        assert shown in node_help, shown
    assert main(["serve", "--help"]) == 0
    serve_help = " ".join(capsys.readouterr().out.split())
    for shown in ("[default: 8080]", "[env var: LLMLB_PORT]", "[default: INFO]", "--log-format [text|json]"):
        assert shown in serve_help, shown
    for command in (["keys", "create"], ["keys", "list"], ["nodes"], ["models"]):
        assert main([*command, "--help"]) == 0
        admin_help = " ".join(capsys.readouterr().out.split())
        assert "[env var: LLMLB_ROUTER; default: http://127.0.0.1:8080]" in admin_help, command
        assert "[env var: LLMLB_ADMIN_KEY]" in admin_help, command


def test_keys_options_work_before_and_after_the_command_name(
    router: ThreadServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMLB_ADMIN_KEY", raising=False)
    after = ["keys", "create", "late", "--router", router.url, "--admin-key", ADMIN_KEY]
    assert main([*after, "--scope", "node", "--node", "gpu-9", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["info"]["scopes"] == ["node"] and created["info"]["node_id"] == "gpu-9"
    assert main(["keys", "--router", router.url, "--admin-key", ADMIN_KEY, "list", "--json"]) == 0
    assert "late" in {k["name"] for k in json.loads(capsys.readouterr().out)["data"]}
    # The command's own flag wins over the group's.
    assert (
        main(
            [
                "keys",
                "--router",
                "http://127.0.0.1:9",
                "list",
                "--router",
                router.url,
                "--admin-key",
                ADMIN_KEY,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["keys", "list", "--router", router.url]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("llmlb: an admin key is required: pass --admin-key or set LLMLB_ADMIN_KEY")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ["--runtime", "openai_compatible", "--upstream", "http://127.0.0.1:9"],
            {"LLMLB_NODE_RUNTIME__OPENAI_COMPATIBLE__SLOTS": "lots"},
            "[runtime.openai_compatible] slots (env LLMLB_NODE_RUNTIME__OPENAI_COMPATIBLE__SLOTS)",
        ),
        (["--runtime", "openai_compatible"], {}, "openai_compatible needs the URL"),
        (["--runtime", "stable_diffusion"], {}, "runtime stable_diffusion"),
        (["--runtime", "nope"], {}, "unknown runtime(s) ['nope']"),
        (
            ["--upstream-slots", "0", "--upstream", "http://127.0.0.1:9"],
            {},
            "[runtime.openai_compatible] slots",
        ),
        ([], {"LLMLB_NODE_THREADS": "-1"}, "[runtime.stable_diffusion] threads"),
    ],
)
def test_a_node_that_cannot_start_says_why_in_one_line_and_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["node", "--api-key", "k", "--models-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("llmlb: ") and says in line, line


def test_a_plugin_that_fails_to_import_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party distribution whose ``llmlb.plugins`` entry point raises on import: ``serve``
    refuses to start with one line naming the entry point and its distribution (no traceback),
    exit 2; the built-in commands are still there."""
    site = tmp_path / "site"
    dist_info = site / "llmlb_broken-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: llmlb-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[llmlb.plugins]\nbroken = llmlb_broken_plugin\n")
    (site / "llmlb_broken_plugin.py").write_text("import a_module_that_is_not_installed  # noqa\n")
    # A process: `serve` sets up logging, which must not outlive it in this one.
    serve = run_cli("serve", "--data-dir", "data", "--port", "0", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert serve.code == 2, serve.err
    assert "Traceback" not in serve.err
    lines = serve.err_lines
    assert lines[-1].startswith(
        "llmlb: refusing to start: plugin 'broken' (llmlb_broken_plugin, from llmlb-broken"
    )
    assert "ModuleNotFoundError: No module named 'a_module_that_is_not_installed'" in lines[-1]
    assert lines[-1].endswith(
        "; fix or uninstall llmlb-broken, or skip third-party plugins (load_entry_points = false)"
    )
    # The core's other commands still run; a command that is not there names the plugin.
    monkeypatch.syspath_prepend(str(site))
    assert main(["config", "check", "--no-env", str(tmp_path / "missing.toml")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmlb: cannot read config ")
    assert main(["broken-command"]) == 2
    first, *_ = capsys.readouterr().err.strip().splitlines()
    assert first.startswith("llmlb: plugin 'broken' (") and first.endswith("; its commands are left out")


def test_demo_on_a_taken_port_and_a_bad_plugin_value_are_one_line(tmp_path: Path) -> None:
    """Processes, as a user runs them: the demo checks its ports before it writes the model or
    starts anything; a bad ``LLMLB_PLUGIN__*`` value names the table, the key, the variable, the
    type expected and the value given."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = run_cli(
            "demo", "--port", str(port), "--data-dir", "data", "--models-dir", "models", cwd=tmp_path
        )
        assert demo.code == 2, demo.err
        assert demo.err_lines == [f"llmlb: port {port} on 127.0.0.1 is in use: pick another with --port"]
        node_port = run_cli("demo", "--port", str(free_port()), "--node-port", str(port), cwd=tmp_path)
        assert node_port.err_lines == [
            f"llmlb: port {port} on 127.0.0.1 is in use: pick another with --node-port"
        ]
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()
    serve = run_cli(
        "serve",
        "--port",
        "0",
        "--data-dir",
        "data",
        cwd=tmp_path,
        env={"LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK": "yes"},
    )
    assert serve.code == 2 and "Traceback" not in serve.err, serve.err
    assert serve.err_lines[-1] == (
        "llmlb: refusing to start: invalid setting [plugin.images] size_fallback "
        "(env LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK): expected true or false, got 'yes'"
    )


@pytest.mark.parametrize("length", [1, 31])
def test_a_short_admin_key_is_refused_at_start_in_one_line(tmp_path: Path, length: int) -> None:
    """A guessable bootstrap admin key stops ``llmlb serve`` before anything is stored, in one line
    that says how to make a good one and never shows the key; ``config check`` says the same."""
    short = "^" * length  # a character nothing else prints
    serve = run_cli(
        "serve", "--port", "0", "--data-dir", "data", cwd=tmp_path, env={"LLMLB_ADMIN_KEY": short}
    )
    assert serve.code == 2 and "Traceback" not in serve.err, serve.err
    line = (
        f"admin_key (LLMLB_ADMIN_KEY) has {length} characters; it needs at least 32: make one with: "
        'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )
    assert serve.err_lines[-1] == f"llmlb: refusing to start: {line}"
    assert serve.err.count("refusing") == 1 and short not in serve.err.replace(line, "")
    assert not (tmp_path / "data").exists()  # refused before anything was written
    config = tmp_path / "router.toml"
    config.write_text(f'admin_key = "{short}"\n')
    check = run_cli("config", "check", str(config), cwd=tmp_path)
    assert check.code == 2 and f"llmlb: {config}: {line}" in check.err_lines, check.err


def test_an_admin_key_of_32_characters_starts(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f'admin_key = "{"k" * 32}"\n')
    check = run_cli("config", "check", str(config), cwd=tmp_path)
    assert check.code == 0, check.err
