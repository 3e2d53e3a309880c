"""``llmlb keys``, ``llmlb models`` and ``llmlb nodes`` run as processes against a real router (and
a node) on loopback: readable tables (local times, "in 3 days", statuses; ``--json`` for the raw
answer), a key's secret alone on stdout, and every ordinary mistake one ``llmlb: ...`` line saying
what to do next, with the traceback only under ``--debug``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmlb_core.cli.main import main
from tests.support.cli_runs import run_cli
from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key, free_port, wait_until

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d"


@pytest.fixture
def echo_router(tmp_path: Path) -> Iterator[ThreadServer]:
    """A router with the test capability ``echo`` and one node (``echo-node``) serving ``echo-1``."""
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin()], name="echo-node", runtimes=["echo"])
        yield router
    finally:
        if node is not None:
            node.stop()
        router.stop()


def _row(out: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first`` (cells are 2+ spaces apart)."""
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{out}")


def test_admin_lists_are_readable_tables_and_json_on_request(
    echo_router: ThreadServer, tmp_path: Path
) -> None:
    env = {"LLMLB_ROUTER": echo_router.url, "LLMLB_ADMIN_KEY": ADMIN_KEY}
    created = run_cli("keys", "create", "ci-bot", "--expires-in", str(3 * 86400 + 60), cwd=tmp_path, env=env)
    assert created.code == 0, created.err
    secret = created.out.strip()
    assert secret.startswith("sk-llmlb-") and created.out == secret + "\n"  # KEY=$(llmlb keys create x)
    assert "'ci-bot'" in created.err and "not shown again" in created.err
    assert httpx.get(f"{echo_router.url}/v1/models", headers={"authorization": f"Bearer {secret}"}).is_success
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    gone_id = httpx.post(f"{echo_router.url}/v0/keys", headers=admin, json={"name": "gone"}).json()["info"][
        "id"
    ]
    short_lived = httpx.post(
        f"{echo_router.url}/v0/keys",
        headers=admin,
        json={"name": "short-lived", "scopes": ["node"], "expires_in_s": 0.5, "node_id": "gpu-1"},
    ).json()["info"]
    revoked = run_cli("keys", "revoke", gone_id, cwd=tmp_path, env=env)
    assert (revoked.code, revoked.out.strip()) == (0, f"revoked key {gone_id}"), revoked.err

    # A second past its expiry: the table says "1 s ago", not "now" (under a second away).
    wait_until(lambda: time.time() > short_lived["expires_at"] + 1.1, 5, "the short-lived key's expiry")
    listing = run_cli("keys", "list", cwd=tmp_path, env=env)
    assert listing.code == 0, listing.err
    header = listing.out.splitlines()[0].split()
    assert header == ["ID", "NAME", "PREFIX", "SCOPES", "NODE", "MODELS", "CREATED", "EXPIRES", "STATUS"]
    bot = _cells_of(listing.out, "ci-bot")
    assert bot[1:4] == ["ci-bot", secret[:13], "api"] and bot[5] == "all" and re.fullmatch(TIME, bot[6]), bot
    assert bot[7:] == ["in 3 days", "active"], bot
    assert _cells_of(listing.out, "gone")[-1] == "revoked"
    short = _cells_of(listing.out, "short-lived")
    assert short[3:5] == ["node", "gpu-1"] and short[-1] == "expired" and short[-2].endswith(" ago"), short
    assert _cells_of(listing.out, "admin (LLMLB_ADMIN_KEY)")[-2:] == ["never", "active"]
    assert not re.search(r"\d{9,}\.\d", listing.out)  # no epoch floats

    raw = run_cli("keys", "list", "--json", cwd=tmp_path, env=env)
    assert {k["name"]: k["revoked"] for k in json.loads(raw.out)["data"]}["gone"] is True
    assert isinstance(json.loads(raw.out)["data"][0]["created_at"], float)

    nodes = run_cli("nodes", cwd=tmp_path, env=env)
    assert nodes.code == 0, nodes.err
    assert nodes.out.splitlines()[0].split()[:4] == ["NAME", "STATUS", "URL", "BUSY/SLOTS"]
    node = _row(nodes.out, "echo-node")
    assert node[1] == "online" and node[3] == "0/1" and node[4] == "0" and node[5] == "echo-1", node
    assert node[7].endswith(" ago") or node[7] == "now", node
    assert "requests waiting in the router's queue: 0" in nodes.out

    models = run_cli("models", cwd=tmp_path, env=env)
    assert models.code == 0, models.err
    assert models.out.splitlines()[0].split()[:4] == ["MODEL", "STATUS", "CAPABILITIES", "NODES"]
    model = _row(models.out, "echo-1")
    assert model[1:3] == ["online", "echo"] and "echo-node" in model[3], model


def _cells_of(out: str, name: str) -> list[str]:
    """The cells of the key row named ``name`` (the second column)."""
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 1 and cells[1] == name:
            return cells
    raise AssertionError(f"no key {name!r} in:\n{out}")


def test_admin_mistakes_are_one_line_saying_what_to_do_next(
    echo_router: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (``main``) for speed, against the real router; the process itself below."""
    router = echo_router.url
    api_key = create_key(router, ["api"], name="not-admin")
    cases: list[tuple[list[str], int, list[str]]] = [
        (
            ["nodes", "--router", router],
            2,
            ["an admin key is required", "--admin-key or set LLMLB_ADMIN_KEY"],
        ),
        (
            ["models", "--router", router, "--admin-key", "sk-llmlb-wrong-key-0123456789"],
            2,
            [f"the router at {router} refused the admin key", "`llmlb keys create NAME --scope admin`"],
        ),
        (
            ["keys", "create", "x", "--router", router, "--admin-key", api_key],
            2,
            ["it is not an admin-scope key", "LLMLB_ADMIN_KEY"],
        ),
        (
            ["keys", "revoke", "no-such-id", "--router", router, "--admin-key", ADMIN_KEY],
            1,
            ["answered 404: No active API key with id 'no-such-id'"],
        ),
        (
            ["keys", "list", "--router", "localhost:8080", "--admin-key", ADMIN_KEY],
            2,
            ["bad router URL 'localhost:8080'", "http://HOST:PORT"],
        ),
    ]
    for args, code, says in cases:
        assert main(args) == code, args
        captured = capsys.readouterr()
        [line] = captured.err.strip().splitlines()
        assert line.startswith("llmlb: ") and all(part in line for part in says), (args, line)
        assert captured.out == ""


def test_a_router_that_is_down_is_one_line_and_a_traceback_only_with_debug(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run_cli("keys", "list", cwd=tmp_path, env={"LLMLB_ROUTER": down, "LLMLB_ADMIN_KEY": ADMIN_KEY})
    assert result.code == 1 and result.out == ""
    [line] = result.err_lines
    assert line.startswith(f"llmlb: cannot reach the router at {down} (")
    assert line.endswith("is it running? (llmlb serve; --router / LLMLB_ROUTER)")
    debug = run_cli("nodes", "--router", down, "--admin-key", ADMIN_KEY, "--debug", cwd=tmp_path)
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.err and "httpx.ConnectError" in debug.err
