"""The ``llmlb`` command line: click, the core's commands plus those of plugins (``node`` and
the stable_diffusion commands come through ``llmlb_register_commands``), defaults shown in
``--help``, options after the command's name, and one line and exit 2 for a bad setting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb_core.cli import main
from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer


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
    for command in ("serve", "keys", "node", "demo", "demo-model", "quantize"):
        assert f"\n  {command} " in listed
    assert main(["node", "--help"]) == 0
    node_help = capsys.readouterr().out
    assert "[default: 8090]" in node_help and "[default: ./models]" in node_help
    assert "--upstream-kind" in node_help and "--threads" in node_help
    assert main(["serve", "--help"]) == 0
    assert "[default: 8080]" in capsys.readouterr().out


def test_keys_options_work_before_and_after_the_command_name(
    router: ThreadServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMLB_ADMIN_KEY", raising=False)
    after = ["keys", "create", "late", "--router", router.url, "--admin-key", ADMIN_KEY]
    assert main([*after, "--scope", "node", "--node", "gpu-9"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["info"]["scopes"] == ["node"] and created["info"]["node_id"] == "gpu-9"
    assert main(["keys", "--router", router.url, "--admin-key", ADMIN_KEY, "list"]) == 0
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
    assert "an admin key is required" in capsys.readouterr().err


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
    monkeypatch.syspath_prepend(str(site))
    code = main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(
        "llmlb: refusing to start: plugin 'broken' (llmlb_broken_plugin, from llmlb-broken"
    )
    assert "ModuleNotFoundError: No module named 'a_module_that_is_not_installed'" in lines[-1]
