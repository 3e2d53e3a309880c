"""The plugin contract: a capability and a runtime type defined here, served end to end over
real loopback HTTP; disabled capabilities; loud failures for broken plugins."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmlb_core.api import hookimpl
from llmlb_core.config.settings import load_settings
from llmlb_core.plugins import PluginError, load_plugins
from llmlb_core.router.app import create_app
from llmlb_node.api import hookimpl as node_hookimpl
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.servers import ADMIN_KEY, REPO, ThreadServer, base_env, free_port

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def echo_system(tmp_path: Path) -> Iterator[tuple[ThreadServer, ThreadServer]]:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin()], name="echo-node", runtimes=["echo"])
        yield router, node
    finally:
        if node is not None:
            node.stop()
        router.stop()


def test_test_defined_capability_and_runtime_serve_end_to_end(echo_system) -> None:
    router, _node = echo_system
    response = httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1", "text": "hello"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"echo": "hello", "node": "echo-node"}
    models = httpx.get(f"{router.url}/v1/models", headers=AUTH).json()["data"]
    assert [(m["id"], m["capabilities"]) for m in models] == [("echo-1", ["echo"])]
    one = httpx.get(f"{router.url}/v1/models/echo-1", headers=AUTH).json()
    assert one["object"] == "model" and one["nodes"] == 1
    schemas = httpx.get(f"{router.url}/v0/schemas", headers=AUTH).json()
    assert "EchoRequest" in schemas["echo"]
    nodes = httpx.get(f"{router.url}/v0/nodes", headers=AUTH).json()["data"]
    assert nodes[0]["runtime_types"] == ["echo"] and nodes[0]["status"] == "online"


def test_node_refuses_requests_without_the_router_credential(echo_system) -> None:
    _, node = echo_system
    for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}, {"x-api-key": "guess"}):
        response = httpx.post(f"{node.url}/v1/echo", json={"model": "echo-1"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_node_credential"


def test_disabled_capability_has_no_routes_and_no_models(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()], capabilities=["images"])
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin()], name="echo-node", runtimes=["echo"])
        response = httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1"}, headers=AUTH)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{router.url}/v1/models", headers=AUTH).json()["data"] == []
        assert httpx.get(f"{router.url}/v1/models/echo-1", headers=AUTH).status_code == 404
        caps = httpx.get(f"{router.url}/v0/capabilities", headers=AUTH).json()["data"]
        assert {c["name"]: c["enabled"] for c in caps}["echo"] is False
    finally:
        if node is not None:
            node.stop()
        router.stop()


def test_unknown_hook_implementation_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def llmlb_register_capabilitys(self, register):  # misspelt hook
            pass

    with pytest.raises(PluginError, match="unknown hook"):
        load_plugins(None, extra_plugins=[Typo()], third_party=False)

    class NodeTypo:
        @node_hookimpl
        def llmlb_node_register_runtime(self, register):
            pass

    with pytest.raises(RuntimePluginError, match="unknown hook"):
        load_runtime_types([NodeTypo()], load_entry_points=False)


def test_contract_violations_fail_loudly() -> None:
    with pytest.raises(PluginError, match="not provided"):
        load_plugins(["nonexistent"], third_party=False)

    # Plugin API v1 (issue 9): routes come with the Capability (build_routes), so the old
    # llmlb_register_routes hook is gone; a plugin still implementing it is refused at start-up.
    class RouteForUnknown:
        @hookimpl
        def llmlb_register_routes(self, register):
            register("ghost")

    with pytest.raises(PluginError, match="unknown hook"):
        load_plugins(None, extra_plugins=[RouteForUnknown()], third_party=False)

    class Twice(EchoCapability):
        pass

    with pytest.raises(PluginError, match="twice"):
        load_plugins(None, extra_plugins=[EchoCapability(), Twice()], third_party=False)

    class NotAType:
        @node_hookimpl
        def llmlb_node_register_runtimes(self, register):
            register("echo")

    with pytest.raises(RuntimePluginError, match="expects a RuntimeType"):
        load_runtime_types([NotAType()], load_entry_points=False)

    with pytest.raises(RuntimePluginError, match="twice"):
        load_runtime_types([EchoRuntimePlugin(), EchoRuntimePlugin()], load_entry_points=False)


def test_builtin_images_capability_is_an_ordinary_plugin(tmp_path: Path) -> None:
    loaded = load_plugins(None, third_party=False)
    assert "images" in loaded.capabilities
    assert "image_generation" in loaded.capabilities["images"].model_flags
    # Capability.runtime_types was never used and is gone (issue 9); the built-in runtimes are
    # entry points like the capabilities.
    assert {"stable_diffusion", "openai_compatible"} <= set(load_runtime_types(load_entry_points=False))
    settings = load_settings(
        None, environ={}, data_dir=str(tmp_path), load_entry_points=False, admin_key=ADMIN_KEY
    )
    paths = {route.path for route in create_app(settings).routes}
    assert "/v1/images/generations" in paths


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK=yes", "[plugin.images] size_fallback"),
        ("LLMLB_PLUGIN__IMAGES__NO_SUCH_KEY=1", "[plugin.images] no_such_key"),
        ("LLMLB_PLUGIN__TEXT__MAX_BODY_BYTES=-3", "[plugin.text] max_body_bytes"),
        ("LLMLB_PLUGIN__AUDIO__MAX_UPLOAD_BYTES=lots", "[plugin.audio] max_upload_bytes"),
    ],
)
def test_a_bad_plugin_setting_stops_serve_with_one_line_and_exit_2(
    tmp_path: Path, variable: str, says: str
) -> None:
    """The real ``llmlb serve`` process: the plugin, the key and its variable are named, no
    traceback (it used to end in a ValueError traceback and exit 1)."""
    name, value = variable.split("=", 1)
    done = subprocess.run(
        [sys.executable, "-m", "llmlb_core.cli", "serve", "--port", str(free_port())],
        env=base_env(**{name: value, "LLMLB_ADMIN_KEY": ADMIN_KEY, "LLMLB_DATA_DIR": str(tmp_path / "data")}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and f"env {name}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
