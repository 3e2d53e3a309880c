"""``llmlb demo``: a router and one local node serving the synthetic image model, for a try-out.

Makes the demo model if missing, starts ``llmlb serve`` and ``llmlb node`` as child processes,
creates a node key and a client key, prints the URL, the key and working examples, and runs
until Ctrl-C (stopping both children).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

DEMO_MODEL = "demo"


class DemoError(click.ClickException):
    """An ordinary reason the demo cannot start (``llmlb: ...``, exit 2)."""

    exit_code = 2


def check_port_free(host: str, port: int, flag: str) -> None:
    """A :class:`DemoError` naming ``flag`` when ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else f"not available ({exc.strerror})"
            raise DemoError(f"port {port} on {host} is {reason}: pick another with {flag}") from None


def _create_key(base: str, admin: str, name: str, scope: str) -> str:
    response = httpx.post(
        f"{base}/v0/keys",
        headers={"authorization": f"Bearer {admin}"},
        json={"name": name, "scopes": [scope]},
        timeout=30,
    )
    if response.status_code != 201:
        raise DemoError(
            f"the router at {base} did not create the demo's {scope} key ({response.status_code}: "
            f"{response.text[:200]}): is another router answering there? Pick another --port"
        )
    return str(response.json()["key"])


def _write_secret(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _admin_key(data_dir: Path) -> str:
    path = data_dir / "demo-admin-key"
    if path.exists():
        return path.read_text().strip()
    key = "sk-llmlb-demo-admin-" + secrets.token_urlsafe(24)
    _write_secret(path, key)
    return key


def _demo_key(base: str, admin: str, data_dir: Path, name: str, scope: str) -> str:
    """The demo's ``scope`` key, kept in the data dir and reused while the router knows it, so
    that every demo run does not add two keys."""
    path = data_dir / f"demo-{scope}-key"
    if path.exists():
        key = path.read_text().strip()
        answer = httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30)
        if answer.status_code != 401:  # a node key is known but lacks the api scope: 403
            return key
    key = _create_key(base, admin, name, scope)
    _write_secret(path, key)
    return key


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited with code {proc.returncode} (its reason is above)")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoError(f"{what} did not come up within {timeout:.0f} s (its log is above)")


def write_demo_model_with_progress(target: Path, *, force: bool = False, family: str = "sd1") -> None:
    """Write the synthetic model of ``family`` ("sd1": demo_checkpoint, "flux": demo_flux) into
    ``target`` unless it is already complete, with a progress bar on a terminal and a line
    every 2 s otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llmlb_node.stable_diffusion.tools import demo_checkpoint, demo_flux

    write_demo_model, demo_model_is_complete = {
        "sd1": (demo_checkpoint.write_demo_model, demo_checkpoint.demo_model_is_complete),
        "flux": (demo_flux.write_demo_flux, demo_flux.demo_flux_is_complete),
    }[family]
    if demo_model_is_complete(target) and not force:
        print(f"demo model present in {target}")
        return
    started = time.monotonic()
    tty = sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not tty,
    ) as progress:
        task = progress.add_task("writing tensors", total=None)
        last_log = [0.0]

        def report(step: int, total: int, label: str) -> None:
            progress.update(task, completed=step, total=total, description=f"writing {label[:40]}")
            if not tty and (time.monotonic() - last_log[0] > 2 or step == total):
                last_log[0] = time.monotonic()
                print(f"  demo-model: {step}/{total} tensors", file=sys.stderr, flush=True)

        write_demo_model(target, progress=report)
    print(f"demo model written to {target} in {time.monotonic() - started:.1f}s")


def run_demo(*, host: str, port: int, node_port: int, data_dir: Path, models_dir: Path) -> int:
    if port == node_port:
        raise DemoError(f"--port and --node-port are both {port}: give them different ports")
    check_port_free(host, port, "--port")
    check_port_free("127.0.0.1", node_port, "--node-port")
    write_demo_model_with_progress(models_dir / DEMO_MODEL)
    admin = _admin_key(data_dir)
    env = {**os.environ, "LLMLB_ADMIN_KEY": admin, "PYTHONUNBUFFERED": "1"}
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    cli = [sys.executable, "-m", "llmlb_core.cli"]
    children: list[subprocess.Popen[bytes]] = []
    try:
        # Children get a session of their own: the terminal's Ctrl-C reaches only this process,
        # which then stops the node (one SIGINT: it deregisters cleanly) before the router. With
        # the terminal's SIGINT too, each child got two and uvicorn cut the node's shutdown short.
        router = subprocess.Popen(
            [*cli, "serve", "--host", host, "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            start_new_session=True,
        )
        children.append(router)
        _wait(f"{base}/health", router, 60, "router")
        node_key = _demo_key(base, admin, data_dir, "demo node", "node")
        api_key = _demo_key(base, admin, data_dir, "demo client", "api")
        node = subprocess.Popen(
            [
                *cli,
                "node",
                "--router",
                base,
                "--port",
                str(node_port),
                "--models-dir",
                str(models_dir),
                "--name",
                "demo-node",
            ],
            env={**env, "LLMLB_API_KEY": node_key},
            start_new_session=True,
        )
        children.append(node)
        _wait(f"http://127.0.0.1:{node_port}/health", node, 60, "node")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            models = httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {api_key}"}).json()
            if any(m["id"] == DEMO_MODEL for m in models.get("data", [])):
                break
            time.sleep(0.3)
        print(
            f"""
================================================================================
 llmlb is running: router {base}  (node demo-node on port {node_port})
 Model: {DEMO_MODEL} (synthetic random weights: real stable-diffusion.cpp inference,
        noise-like pictures; point a node at real weights for real images)
 API key:   {api_key}
 Admin key: stored in {data_dir / "demo-admin-key"}

 Dashboard and image playground: {base}/dashboard  (sign in with the admin key)
 API docs (Swagger UI, offline):  {base}/docs
 Admin from the shell: LLMLB_ROUTER={base} LLMLB_ADMIN_KEY=$(cat {data_dir / "demo-admin-key"}) llmlb nodes

 curl {base}/v1/images/generations \\
   -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \\
   -d '{{"model": "{DEMO_MODEL}", "prompt": "a white cat", "size": "256x256", "response_format": "url"}}'

 {sys.executable} -c "
from openai import OpenAI
client = OpenAI(base_url='{base}/v1', api_key='{api_key}')
img = client.images.generate(model='{DEMO_MODEL}', prompt='a white cat', size='256x256',
                             response_format='url')
print(img.data[0].url)"

 Ctrl-C stops router and node.
================================================================================
""",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # The node first, so that it can deregister while the router still runs.
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
