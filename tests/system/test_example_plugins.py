"""The two example plugin packages of ``examples/``, installed and run as a third party's would be.

``llmlb-echo-capability`` (router: capability ``reverse``, route ``POST /v1/reverse``) and
``llmlb-echo-runtime`` (node: runtime type ``reverser``) are pip-installed into a folder of
their own, never into the project's environment; the real router and node processes find
their entry points through ``PYTHONPATH`` (``importlib.metadata`` reads the ``.dist-info``
there). Clients talk to the router through the official ``openai`` SDK.

What the plugins do is tested by the examples' own tests (``examples/*/tests``, in one process
with ``llmlb_core.testing``, each well under 2 s), which run here too (the suite collects
``tests/`` only); the processes here check what only processes show: that the installed
packages are found through their entry points, and the exit status of a bad setting.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.servers import (
    ADMIN_KEY,
    REPO,
    Proc,
    admin_get,
    base_env,
    create_key,
    free_port,
    node_proc,
    router_proc,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PACKAGES = ("llmlb-echo-capability", "llmlb-echo-runtime")
MODEL = "reverser-small"  # set through the runtime's own settings table
SLOTS = 3
MAX_CHARS = 20  # the capability's own setting: longer texts are refused by the router


def one(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one row of an admin listing whose fields have the values of ``match``."""
    (row,) = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return row


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both examples, pip-installed (from copies: a build writes into its source tree) into a
    folder of their own. Offline: no index, no dependencies, and no build isolation, so the
    environment's own setuptools builds them (70.1 or later builds wheels by itself; the test
    extra asks for it)."""
    tmp = tmp_path_factory.mktemp("example-plugins")
    sources = [str(shutil.copytree(EXAMPLES / name, tmp / "src" / name)) for name in PACKAGES]
    target = tmp / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            *sources,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@dataclass
class ExampleSystem:
    router: Proc
    node: Proc
    node_id: str
    api_key: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=self.api_key, max_retries=0)

    def reverse(self, body: dict[str, Any]) -> httpx.Response:
        """``POST /v1/reverse`` as a client of a custom route does it with the SDK."""
        return self.client().post("/reverse", body=body, cast_to=httpx.Response)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, site: Path) -> Iterator[ExampleSystem]:
    """A real router and a real node process, each finding the examples through PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("example-system")
    models_dir = tmp / "models"  # empty: the reverser runtime needs no files
    models_dir.mkdir()
    started: list[Proc] = []
    try:
        router = router_proc(
            tmp, env={"PYTHONPATH": str(site), "LLMLB_PLUGIN__REVERSE__MAX_CHARS": str(MAX_CHARS)}
        )
        started.append(router)
        router.start().wait_healthy()
        node = node_proc(
            tmp,
            router.url,
            models_dir,
            create_key(router.url, ["node"], name="node"),
            name="reverser-node",
            extra=["--runtime", "reverser"],
            env={
                "PYTHONPATH": str(site),
                "LLMLB_NODE_RUNTIME__REVERSER__MODEL": MODEL,
                "LLMLB_NODE_RUNTIME__REVERSER__SLOTS": str(SLOTS),
            },
        )
        started.append(node)
        node.start().wait_healthy(60).wait_online(router.url)
        node_id = one(admin_get(router.url, "/v0/nodes")["data"], name="reverser-node")["id"]
        yield ExampleSystem(router, node, node_id, create_key(router.url, ["api"], name="client"))
    finally:
        for proc in reversed(started):
            proc.stop()


def test_the_capability_is_installed_enabled_and_publishes_its_schemas(system: ExampleSystem) -> None:
    reverse = one(admin_get(system.router.url, "/v0/capabilities")["data"], name="reverse")
    assert reverse["enabled"] is True
    assert reverse["model_flags"] == ["reverse"]
    assert reverse["schemas"] == ["ReverseRequest", "ReverseResponse"]
    schema = admin_get(system.router.url, "/v0/schemas")["reverse"]["ReverseRequest"]
    assert "text" in str(schema) and "model" in str(schema)
    assert "reverse" in httpx.get(f"{system.router.url}/health", timeout=10).json()["capabilities"]


def test_reverse_is_answered_by_the_node(system: ExampleSystem) -> None:
    response = system.reverse({"model": MODEL, "text": "héllo, wörld"})
    assert response.status_code == 200
    assert response.json() == {"model": MODEL, "text": "dlröw ,olléh", "object": "reverse"}
    assert response.headers["x-llmlb-node"] == system.node_id
    node = one(admin_get(system.router.url, "/v0/nodes")["data"], id=system.node_id)
    assert (node["runtime_types"], node["slots"]) == (["reverser"], SLOTS)
    with pytest.raises(openai.BadRequestError) as caught:  # the capability's own setting, from the env
        system.reverse({"model": MODEL, "text": "x" * (MAX_CHARS + 1)})
    assert caught.value.param == "text"


def test_the_examples_own_tests_pass() -> None:
    """Each example's tests, as its author runs them (``pytest examples/<name>``)."""
    for name in PACKAGES:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
             str(EXAMPLES / name / "tests")],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_capability_setting_stops_serve_with_one_line_and_exit_2(
    tmp_path: Path, site: Path, value: str
) -> None:
    variable = "LLMLB_PLUGIN__REVERSE__MAX_CHARS"
    done = subprocess.run(
        [sys.executable, "-m", "llmlb_core.cli", "serve", "--port", str(free_port())],
        env=base_env(
            PYTHONPATH=str(site),
            LLMLB_ADMIN_KEY=ADMIN_KEY,
            LLMLB_DATA_DIR=str(tmp_path / "data"),
            **{variable: value},
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]  # before it: INFO lines only (plugins loaded)
    assert "[plugin.reverse] max_chars" in last and f"env {variable}" in last, done.stderr


def test_a_bad_runtime_setting_stops_the_node_with_one_line_and_exit_2(tmp_path: Path, site: Path) -> None:
    variable = "LLMLB_NODE_RUNTIME__REVERSER__SLOTS"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmlb_core.cli.main",
            "node",
            "--router",
            f"http://127.0.0.1:{free_port()}",  # never reached: the node stops first
            "--port",
            str(free_port()),
            "--api-key",
            "sk-llmlb-unused",
            "--models-dir",
            str(tmp_path),
            "--runtime",
            "reverser",
        ],
        env=base_env(PYTHONPATH=str(site), **{variable: "many"}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]
    assert "[runtime.reverser] slots" in last and f"env {variable}" in last, done.stderr
