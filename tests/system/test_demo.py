"""``llmlb demo`` (what ``make demo`` runs) as a user runs it: started in a terminal's way, used,
stopped with Ctrl-C (SIGINT to its whole process group), started again on the same data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.servers import base_env, free_port, wait_until

BANNER_KEY = re.compile(r"API key:\s+(sk-llmlb-\S+)")
# The banner's openai example: an interpreter, -c and a quoted script over several lines.
BANNER_PYTHON = re.compile(r'^ (\S+ -c "\n.*?\n[^\n]*")$', re.MULTILINE | re.DOTALL)


@contextmanager
def demo(tmp_path: Path, models_dir: Path, port: int, node_port: int, run: int) -> Iterator[tuple[str, Path]]:
    """A running demo: (its client API key, its output file). Killed, with its children, even
    when the test fails."""
    out = tmp_path / f"demo-{run}.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "llmlb_core.cli", "demo"),
                *("--port", str(port), "--node-port", str(node_port)),
                *("--data-dir", str(tmp_path / "data"), "--models-dir", str(models_dir)),
            ],
            cwd=tmp_path,
            env=base_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
            # A terminal's job gets SIGINT; a background job of a script ignores it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_until(lambda: "Ctrl-C stops router and node" in out.read_text(), 180, "the demo's banner")
        match = BANNER_KEY.search(out.read_text())
        assert match, out.read_text()
        yield match.group(1), out
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_demo_serves_stops_cleanly_on_ctrl_c_and_reuses_its_keys(
    tmp_path: Path, models_dir: Path
) -> None:
    port, node_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    keys_seen = []
    for run in (1, 2):
        with demo(tmp_path, models_dir, port, node_port, run) as (api_key, out):
            keys_seen.append(api_key)
            auth = {"authorization": f"Bearer {api_key}"}

            def demo_listed(auth: dict[str, str] = auth) -> bool:
                models = httpx.get(f"{base}/v1/models", headers=auth).json()["data"]
                return any(m["id"] == "demo" for m in models)

            wait_until(
                demo_listed,
                30,
                "the demo model",
            )
            banner = out.read_text()
            assert f"{base}/dashboard" in banner and f"{base}/docs" in banner
            assert httpx.get(f"{base}/dashboard/login").status_code == 200
            if run == 1:
                # The openai example works as printed, in a shell, with the interpreter it names
                # (the demo's, which has the openai package: `make demo` installs it).
                example = BANNER_PYTHON.search(banner)
                assert example and example.group(1).startswith(f"{sys.executable} -c"), banner
                done = subprocess.run(
                    ["bash", "-c", example.group(1)], capture_output=True, text=True, timeout=120
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith(f"{base}/"), done.stdout
            admin = (tmp_path / "data" / "demo-admin-key").read_text().strip()
            listed = httpx.get(f"{base}/v0/keys", headers={"authorization": f"Bearer {admin}"}).json()["data"]
        log = out.read_text()
        assert "Traceback" not in log and "could not deregister" not in log, log
        assert "deregistered from router" in log, log
    # The second run found its keys in the data dir: no new ones.
    assert keys_seen[0] == keys_seen[1]
    names = sorted(k["name"] for k in listed)
    assert names.count("demo node") == 1 and names.count("demo client") == 1, names
    for scope in ("admin", "node", "api"):
        assert (tmp_path / "data" / f"demo-{scope}-key").stat().st_mode & 0o077 == 0
