"""Helpers shared by the benchmarks: ports, waiting, server processes, CPU time, memory, percentiles,
router admin calls, serving the code of another tree (a baseline commit)."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parent.parent
# The installed names of the plugins/ and node_runtimes/ folders (pyproject.toml's package-dir
# mapping, since commit 1d874d4); older trees import the folders by their own names.
INSTALLED_NAMES = {"llmlb_plugins": "plugins", "llmlb_node": "node_runtimes"}
DISTRIBUTION = "llmlb"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads, live and exited) of process ``pid``, in seconds.

    Reads the process's CPU-time clock (nanosecond precision, Linux: the clock id is
    ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``); falls back to /proc/PID/stat (clock ticks).
    """
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the ")" that closes the command name; utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` and its children: the live ones (found in /proc) and the
    exited ones it has waited for (its ``cutime`` + ``cstime``), in seconds. For a server that
    forks a process per connection (PostgreSQL)."""
    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        # Fields after the command name: ppid is field 4; utime, stime, cutime, cstime 14-17.
        child_pid = int(stat_path.parent.name)
        if child_pid == pid:
            total += sum(int(f) for f in fields[11:15]) / _CLOCK_TICKS
        elif int(fields[1]) == pid:
            total += sum(int(f) for f in fields[11:13]) / _CLOCK_TICKS
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class ServerProcess:
    """A Python server process (``python -m MODULE ARGS``) in its own session, logging to a file."""

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        log_path: Path,
        url: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.log_path = log_path
        self.url = url
        # Extra environment variables (set after the inherited ``LLMLB_*`` ones are dropped).
        self.extra_env = dict(env or {})
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} not started"
        return self.popen.pid

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMLB_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        return self

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def wait_healthy(self, timeout: float = 30) -> ServerProcess:
        def ok() -> bool:
            self.check_alive()
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        wait_until(ok, timeout, f"{self.name} at {self.url}/health")
        return self

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process while it runs."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGINT, then SIGKILL to the whole session after ``timeout`` seconds."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process (SIGSTOP) could not act on SIGINT
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode


class PySpy:
    """``py-spy record`` attached to a running process until :meth:`stop` (output written then).

    The output format follows the file name: ``.txt`` collapsed stacks, ``.json`` speedscope,
    anything else a flame graph SVG.
    """

    def __init__(
        self, executable: str, pid: int, output: Path, *, rate: int = 250, native: bool = False
    ) -> None:
        suffix = output.suffix.lower()
        fmt = {".txt": "raw", ".json": "speedscope"}.get(suffix, "flamegraph")
        self.command = [
            executable,
            "record",
            "--pid",
            str(pid),
            "--output",
            str(output),
            "--rate",
            str(rate),
            "--format",
            fmt,
            *(["--native"] if native else []),
        ]
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        self.popen = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach before the traffic starts
        if self.popen.poll() is not None:
            err = self.popen.stderr.read().decode(errors="replace") if self.popen.stderr else ""
            raise RuntimeError(f"py-spy exited at once ({self.popen.returncode}): {err.strip()}")
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


# --------------------------------------------------------------------------- added for node_bench / scaling


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def create_key(router_url: str, admin_key: str, name: str, scopes: Sequence[str]) -> str:
    """A new API key with ``scopes``, made with the router's admin key."""
    response = httpx.post(
        f"{router_url}/v0/keys",
        json={"name": name, "scopes": list(scopes)},
        headers={"authorization": f"Bearer {admin_key}"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["key"])


def list_nodes(router_url: str, admin_key: str) -> list[dict[str, Any]]:
    """The router's ``/v0/nodes`` listing."""
    response = httpx.get(
        f"{router_url}/v0/nodes", headers={"authorization": f"Bearer {admin_key}"}, timeout=5
    )
    response.raise_for_status()
    return list(response.json()["data"])


def online_node_names(router_url: str, admin_key: str) -> set[str]:
    return {n["name"] for n in list_nodes(router_url, admin_key) if n["status"] == "online"}


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def core_module(name: str, before_layers: str) -> ModuleType:
    """The core's module ``llmlb_core.<name>``, or ``llmlb_core.<before_layers>`` when the code
    imported (another tree's: :func:`import_from_tree`) is from before the core was laid out in
    subpackages."""
    try:
        return importlib.import_module(f"llmlb_core.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"llmlb_core.{before_layers}")


def server_logging() -> None:
    """What a benchmark's server sub-process logs: warnings and errors only."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


def serve_router(
    port: int, data_dir: str, admin_key: str, *, extra_plugins: Sequence[object] = (), **settings: Any
) -> None:
    """Run a router on loopback in this process (a benchmark's router sub-mode)."""
    load_settings = core_module("config.settings", "settings").load_settings
    create_app = core_module("router.app", "app").create_app
    run = core_module("server.serving", "serving").run

    server_logging()
    config = load_settings(
        None,
        environ={},
        admin_key=admin_key,
        data_dir=data_dir,
        load_entry_points=False,
        host="127.0.0.1",
        port=port,
        log_level="WARNING",
        **settings,
    )
    run(create_app(config, extra_plugins=extra_plugins), host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------- another tree's code


def uses_installed_names(tree: Path) -> bool:
    """Whether ``tree`` imports its folders as ``llmlb_plugins`` / ``llmlb_node`` (its
    pyproject.toml maps them)."""
    return 'llmlb_node = "node_runtimes"' in (tree / "pyproject.toml").read_text()


def composes_from_entry_points(tree: Path) -> bool:
    """Whether ``tree``'s core finds its built-in plugins as the ``llmlb`` distribution's entry
    points (older cores name them, and would register them twice)."""
    return '[project.entry-points."llmlb.plugins"]' in (tree / "pyproject.toml").read_text()


def node_package(tree: Path) -> str:
    """The name ``tree``'s code imports its node folder by (``llmlb_node`` or ``node_runtimes``)."""
    return "llmlb_node" if uses_installed_names(tree) else "node_runtimes"


class TreePackages(importlib.abc.MetaPathFinder):
    """Finds ``llmlb_plugins`` and ``llmlb_node`` in a tree's ``plugins/`` and ``node_runtimes/``
    folders: without it they would come from this checkout's editable install, whatever the tree."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = INSTALLED_NAMES.get(fullname)
        init = self.tree / folder / "__init__.py" if folder else None
        if init is None or not init.exists():
            return None  # submodules are found through the package's __path__
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


def _hide_installed_distribution() -> None:
    """Leave the installed ``llmlb`` distribution out of ``importlib.metadata`` in this process:
    its entry points name this checkout's built-in plugins, which an older core does not load
    that way (it names its own)."""
    installed = importlib.metadata.distributions

    def distributions(**kwargs: Any) -> Iterator[importlib.metadata.Distribution]:
        return (d for d in installed(**kwargs) if d.name.lower().replace("_", "-") != DISTRIBUTION)

    importlib.metadata.distributions = distributions  # type: ignore[assignment]


def import_from_tree(tree: Path) -> None:
    """Make this process import the llmlb code of ``tree`` (a checkout or an export of any
    commit) instead of this checkout's editable install: its folders first on ``sys.path``, also
    under their installed names where the tree uses them, and the installed entry points hidden
    where the tree's core does not compose its built-ins from them."""
    tree = tree.resolve()
    sys.path.insert(0, str(tree))
    if uses_installed_names(tree):
        sys.meta_path.insert(0, TreePackages(tree))
    if not composes_from_entry_points(tree):
        _hide_installed_distribution()


_SITECUSTOMIZE = """\
# Written by bench/_common.py (tree_pythonpath): this interpreter imports the llmlb code of
# {tree}, not the editable install's.
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_llmlb_bench_common", {common!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_module.import_from_tree(Path({tree!r}))
"""


def tree_pythonpath(tree: Path, shim_dir: Path) -> str:
    """``PYTHONPATH`` for processes (and their sub-processes) that must run ``tree``'s code:
    ``PYTHONPATH=tree`` alone is not enough, since this checkout's editable install maps
    ``llmlb_plugins`` and ``llmlb_node`` to its own folders. Writes a ``sitecustomize.py`` into
    ``shim_dir`` that calls :func:`import_from_tree` at start-up."""
    tree = tree.resolve()
    shim_dir.mkdir(parents=True, exist_ok=True)
    code = _SITECUSTOMIZE.format(tree=str(tree), common=str(Path(__file__).resolve()))
    (shim_dir / "sitecustomize.py").write_text(code)
    return os.pathsep.join([str(shim_dir), str(tree)])
