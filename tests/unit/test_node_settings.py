"""The node's settings: the TOML file, ``LLMLB_NODE_*`` variables and flags, per-runtime tables
parsed once with errors that name the runtime, the key and its variable, and which runtimes a
node starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmlb_core.config.settings import SettingsError
from llmlb_node.api import NoSettings, Runtime, RuntimeConfigError, RuntimeContext, RuntimeType, hookimpl
from llmlb_node.app import build_runtimes
from llmlb_node.commands import runtime_options, runtime_tables
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings
from llmlb_node.plugins import load_runtime_types
from llmlb_node.settings import NodeSettings, load_node_settings, load_runtime_settings
from tests.support.echo_plugin import EchoRuntime


def test_file_then_environment_then_flags_with_runtime_tables_merged_by_key(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'port = 9001\nname = "from-file"\n'
        '[runtime.openai_compatible]\nurl = "http://file:1"\nslots = 2\n'
        "[runtime.stable_diffusion]\nthreads = 3\n"
    )
    environ = {
        "LLMLB_NODE_PORT": "9002",
        "LLMLB_NODE_RUNTIMES": "openai_compatible, stable_diffusion",
        "LLMLB_NODE_RUNTIME__OPENAI_COMPATIBLE__SLOTS": "5",
        "LLMLB_API_KEY": "k",
    }
    settings = load_node_settings(
        config,
        environ=environ,
        port=9003,
        name=None,
        runtime_settings={"openai_compatible": {"kind": "vllm"}},
    )
    assert (settings.port, settings.name, settings.api_key) == (9003, "from-file", "k")
    assert settings.runtimes == ["openai_compatible", "stable_diffusion"]
    assert settings.runtime_settings == {
        "openai_compatible": {"url": "http://file:1", "slots": "5", "kind": "vllm"},
        "stable_diffusion": {"threads": 3},
    }
    cfg = load_runtime_settings(
        "openai_compatible", settings.runtime_settings["openai_compatible"], OpenAICompatibleSettings
    )
    assert (cfg.slots, cfg.kind) == (5, "vllm")


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (
            {"slots": "lots"},
            "[runtime.openai_compatible] slots (env LLMLB_NODE_RUNTIME__OPENAI_COMPATIBLE__SLOTS)",
        ),
        ({"kind": "tgi"}, "[runtime.openai_compatible] kind"),
        ({"no_such_key": 1}, "[runtime.openai_compatible] no_such_key"),
    ],
)
def test_a_bad_runtime_setting_names_the_runtime_the_key_and_its_variable(
    table: dict[str, Any], says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_runtime_settings("openai_compatible", table, OpenAICompatibleSettings)
    assert says in str(caught.value)


def test_a_bad_node_setting_or_config_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="invalid node setting"):
        load_node_settings(environ={"LLMLB_NODE_PORT": "many"})
    broken = tmp_path / "node.toml"
    broken.write_text("port = ")
    with pytest.raises(SettingsError, match="cannot read node config"):
        load_node_settings(broken, environ={})


def test_runtime_flags_become_tables_only_when_given() -> None:
    """Each runtime type brings its own `llmlb node` flags (RuntimeType.cli_options), renamed
    <runtime>.<key>; the values given become keys of that runtime's table."""
    options = runtime_options(load_runtime_types(load_entry_points=False))
    assert {"openai_compatible.url", "openai_compatible.models", "stable_diffusion.threads"} <= set(options)
    assert options["stable_diffusion.threads"][0].opts == ["--threads"]
    assert options["stable_diffusion.threads"][0].default == 0  # the settings field's default
    assert runtime_tables({}, options) == {}
    given = {
        "openai_compatible.url": "http://u:1",
        "openai_compatible.models": ("a", "b"),
        "stable_diffusion.threads": 2,
    }
    assert runtime_tables(given, options) == {
        "openai_compatible": {"url": "http://u:1", "models": ["a", "b"]},
        "stable_diffusion": {"threads": 2},
    }


class Counter(msgspec.Struct, forbid_unknown_fields=True):
    slots: int = 1


class Plugin:
    """Runtime ``counted`` (serves when slots > 0) and runtime ``idle`` (never has anything)."""

    def __init__(self) -> None:
        self.contexts: list[RuntimeContext[Any]] = []

    def counted(self, context: RuntimeContext[Counter]) -> Runtime | None:
        self.contexts.append(context)
        return EchoRuntime(context, context.settings.slots) if context.settings.slots else None

    @hookimpl
    def llmlb_node_register_runtimes(self, register: Any) -> None:
        register(RuntimeType(name="counted", factory=self.counted, settings=Counter))
        register(RuntimeType(name="idle", factory=lambda context: None, settings=NoSettings))


def node(**settings: Any) -> NodeSettings:
    return NodeSettings(name="n1", node_id="id-1", models_dir="/nowhere", **settings)


def test_a_runtime_gets_its_own_settings_parsed_once_and_the_node_identity() -> None:
    plugin = Plugin()
    [runtime] = build_runtimes(
        node(runtimes=["counted"], runtime_settings={"counted": {"slots": "3"}}), extra_plugins=[plugin]
    )
    assert runtime.slots == 3
    [context] = plugin.contexts
    assert context == RuntimeContext(
        name="counted",
        settings=Counter(slots=3),
        node_id="id-1",
        node_name="n1",
        models_dir=Path("/nowhere"),
        requested=True,
    )


def test_a_requested_runtime_with_nothing_to_serve_is_a_config_error() -> None:
    with pytest.raises(RuntimeConfigError, match="idle was asked for"):
        build_runtimes(node(runtimes=["idle"]), extra_plugins=[Plugin()])
    with pytest.raises(RuntimeConfigError, match="openai_compatible needs the URL"):
        build_runtimes(node(runtimes=["openai_compatible"]), extra_plugins=[Plugin()])
    with pytest.raises(SettingsError, match=r"\[runtime.counted\] slots"):
        build_runtimes(
            node(runtimes=["counted"], runtime_settings={"counted": {"slots": "x"}}), extra_plugins=[Plugin()]
        )


def test_runtimes_not_asked_for_that_have_nothing_to_serve_are_skipped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="llmlb.node")
    runtimes = build_runtimes(
        node(runtime_settings={"counted": {"slots": 1}, "ghost": {"x": 1}}), extra_plugins=[Plugin()]
    )
    assert len(runtimes) == 1  # counted; idle and openai_compatible have nothing to serve
    messages = [r.getMessage() for r in caplog.records if r.name == "llmlb.node"]
    assert not any("nothing to serve" in m for m in messages)
    assert any("[runtime.ghost]" in m for m in messages)


def test_a_node_with_nothing_to_serve_is_a_config_error_suggesting_the_demo_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    idle = {"counted": {"slots": 0}}
    with pytest.raises(RuntimeConfigError, match="nothing to serve") as raised:
        build_runtimes(NodeSettings(models_dir=str(missing), runtime_settings=idle), extra_plugins=[Plugin()])
    assert f"the models dir {missing} does not exist" in str(raised.value)
    assert f"llmlb demo-model {missing / 'demo'}" in str(raised.value)
    # Runtimes that need no files start only when named: the line says how, and which there are.
    assert "no runtime asked for (--runtime NAME; installed: counted, idle, openai_compatible" in str(
        raised.value
    )
    with pytest.raises(RuntimeConfigError, match=f"no model folder in {tmp_path}"):
        build_runtimes(
            NodeSettings(models_dir=str(tmp_path), runtime_settings=idle), extra_plugins=[Plugin()]
        )


def test_router_url_takes_one_router_or_several(tmp_path: Path) -> None:
    """One URL stays a string (configs as before); several come as a TOML list, a comma-separated
    (or JSON array) variable, or repeated flags; in order, each once, without a trailing /."""
    one = tmp_path / "one.toml"
    one.write_text('router_url = "http://r1:8080/"\n')
    assert load_node_settings(one, environ={}).router_url == "http://r1:8080"
    assert load_node_settings(one, environ={}).router_urls == ["http://r1:8080"]
    several = tmp_path / "several.toml"
    several.write_text('router_url = ["http://r1:8080", "https://r2"]\n')
    assert load_node_settings(several, environ={}).router_urls == ["http://r1:8080", "https://r2"]
    environ = {"LLMLB_NODE_ROUTER_URL": " http://r3:1, http://r4:2 ,http://r3:1"}
    assert load_node_settings(one, environ=environ).router_url == ["http://r3:1", "http://r4:2"]
    environ = {"LLMLB_NODE_ROUTER_URL": '["http://r5", "http://r6"]'}
    assert load_node_settings(environ=environ).router_urls == ["http://r5", "http://r6"]
    flags = load_node_settings(one, environ=environ, router_url=["http://r7", "http://r8"])
    assert flags.router_urls == ["http://r7", "http://r8"]
    assert NodeSettings().router_urls == ["http://127.0.0.1:8080"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://r1,ftp://r2", "'ftp://r2': expected an http:// or https:// URL, got 'http://r1,ftp://r2'"),
        ("r1:8080", "'r1:8080': expected an http:// or https:// URL"),
        ("http://r1:port", "'http://r1:port': Port could not be cast to integer value"),
        ("http://", "'http://': no host"),
        (
            "http://r1,https://node:s3cret@r2",
            "'https://***@r2': no credentials in a router URL (give the node's key with --api-key "
            "or LLMLB_API_KEY), got 'http://r1,https://***@r2'",
        ),
        ("https://tok3n@r2/", "'https://***@r2/': no credentials in a router URL"),
        (" , ", "expected at least one router URL"),
        ('["http://r1",', "expected URLs, comma-separated or a JSON array"),
    ],
)
def test_a_bad_router_url_is_one_line_naming_it_without_its_credentials(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_node_settings(environ={"LLMLB_NODE_ROUTER_URL": value})
    message = str(caught.value)
    assert message.startswith("invalid node setting router_url (env LLMLB_NODE_ROUTER_URL): ")
    assert says in message and "\n" not in message
    assert "s3cret" not in message and "tok3n" not in message


def test_router_flag_repeats_and_its_variable_takes_a_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmlb node --router A --router B`, or LLMLB_NODE_ROUTER_URL=A,B: the settings the node
    would start with (its app is not started here); a bad one is one line and exit 2."""
    from llmlb_core.cli.main import main

    started: list[NodeSettings] = []

    def create_node_app(settings: NodeSettings) -> None:
        started.append(settings)
        raise SettingsError("not started in this test")

    monkeypatch.setattr("llmlb_node.app.create_node_app", create_node_app)
    for name in ("LLMLB_NODE_ROUTER_URL", "LLMLB_NODE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    base = ["node", "--api-key", "k"]
    assert main([*base, "--router", "http://a:1", "--router", "http://b:2/"]) == 2
    assert main([*base, "--router", "http://c:3"]) == 2
    monkeypatch.setenv("LLMLB_NODE_ROUTER_URL", "http://d:4,http://e:5")
    assert main(base) == 2
    assert [s.router_url for s in started] == [
        ["http://a:1", "http://b:2"],
        "http://c:3",
        ["http://d:4", "http://e:5"],
    ]
    capsys.readouterr()
    assert main([*base, "--router", "http://a:1", "--router", "http://user:pw@b"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "invalid node setting router_url" in line and "'http://***@b'" in line and "pw" not in line
    assert len(started) == 3
