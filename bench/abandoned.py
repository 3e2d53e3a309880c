"""Waiting behind abandoned requests: before (the baseline commit) and after (this tree), one run.

Run: ``.venv/bin/python -m bench.abandoned`` (``--steps N`` sets the length of one generation,
``--rounds K`` repeats the measurement, ``--json PATH`` keeps the numbers).

The baseline is checked out with ``git worktree add`` into a temporary directory (removed at the
end) and served from there with this venv: ``python -m llmlb_core.cli`` imports the code of the
directory it starts in (``--serve-from``, a sub-mode of this module, puts that directory first on
``sys.path`` and keeps this checkout's editable install and entry points out of its way:
``bench._common.import_from_tree``). For each version, one after the other, with real processes on loopback:

1. a router (no queue timeout) and one StableDiffusion node (one slot; heartbeat interval as the
   router sets it, 10 s) serving the synthetic demo model at 64x64;
2. a warm-up generation (model load), then 3 single generations, timed;
3. 5 clients each send a generation, 0.2 s apart (the first runs, 4 wait), and all close their
   connections 0.5 s after the last was sent;
4. a 6th request is sent at once and timed until its answer is in;
5. 3 more single generations, timed. ``T``, one generation time, is the median of the 6 timed
   ones around the measurement (the machine's load drifts; on a shared machine it drifts a lot).

Reported per version and round: ``T``, the 6th request's latency in seconds and in units of
``T`` (before: about 6, the node runs all 5 abandoned jobs first; target after: about 2, the
running image finishes, then the 6th runs), and how many jobs the node ran for nobody; then the
medians over the rounds and their ratio. Rounds alternate the order of the versions (ABBA).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    REPO,
    ServerProcess,
    create_key,
    free_port,
    import_from_tree,
    median,
    online_node_names,
    wait_until,
)
from bench.node_bench import DEMO_DIR, ensure_demo_model

BASELINE = "d01a649"
ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"  # loopback, throw-away data dir
ABANDONED = 5
SEND_GAP_S = 0.2
LEAVE_AFTER_S = 0.5
JOB_DONE = re.compile(r"job \d+ \(demo\): \d+ image\(s\)")


@dataclass
class Figure:
    version: str
    code: str
    generation_s: float  # T
    sixth_s: float
    jobs_for_nobody: int

    @property
    def in_generations(self) -> float:
        return self.sixth_s / self.generation_s


class Cluster:
    """A router and one SD node, served from ``code`` (a checkout of llmlb)."""

    def __init__(self, code: Path, tmp: Path, label: str) -> None:
        router_port, node_port = free_port(), free_port()
        self.router = ServerProcess(
            f"{label}-router",
            "bench.abandoned",
            [
                *("--serve-from", str(code), "serve", "--host", "127.0.0.1", "--port", str(router_port)),
                *("--data-dir", str(tmp / f"{label}-data")),
            ],
            tmp / f"{label}-router.log",
            f"http://127.0.0.1:{router_port}",
            # Before, the 6th waits for 5 ghost jobs: it must not time out in the queue.
            env={"LLMLB_ADMIN_KEY": ADMIN_KEY, "LLMLB_QUEUE_TIMEOUT_S": "3600"},
        )
        self.node_port = node_port
        self.code = code
        self.tmp = tmp
        self.label = label
        self.node: ServerProcess | None = None

    def start(self) -> Cluster:
        self.router.start().wait_healthy()
        key = create_key(self.router.url, ADMIN_KEY, "bench-node", ["node"])
        self.node = ServerProcess(
            f"{self.label}-node",
            "bench.abandoned",
            [
                *("--serve-from", str(self.code), "node", "--router", self.router.url),
                *("--host", "127.0.0.1", "--port", str(self.node_port), "--api-key", key),
                *("--models-dir", str(DEMO_DIR.parent), "--name", "bench-node"),
            ],
            self.tmp / f"{self.label}-node.log",
            f"http://127.0.0.1:{self.node_port}",
        )
        self.node.start().wait_healthy(60)
        wait_until(lambda: "bench-node" in online_node_names(self.router.url, ADMIN_KEY), 30, "node online")
        return self

    def stop(self) -> None:
        for proc in (self.node, self.router):
            if proc is not None:
                proc.stop()

    def jobs_done(self) -> int:
        assert self.node is not None
        return len(JOB_DONE.findall(self.node.log_tail(10_000_000)))


async def measure(cluster: Cluster, steps: int, version: str) -> Figure:
    key = create_key(cluster.router.url, ADMIN_KEY, "bench-client", ["api"])
    body = {"model": "demo", "prompt": "a lighthouse", "steps": steps, "response_format": "b64_json"}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=cluster.router.url, headers={"authorization": f"Bearer {key}"}, timeout=600, limits=limits
    ) as client:

        async def generate(seed: int) -> float:
            started = time.monotonic()
            response = await client.post("/v1/images/generations", json={**body, "seed": seed})
            response.raise_for_status()
            return time.monotonic() - started

        await generate(0)  # loads the model
        timed = [await generate(seed) for seed in (1, 2, 3)]
        before = cluster.jobs_done()
        leaving = []
        for seed in range(ABANDONED):
            leaving.append(asyncio.create_task(generate(100 + seed)))
            await asyncio.sleep(SEND_GAP_S)
        await asyncio.sleep(LEAVE_AFTER_S - SEND_GAP_S)
        for request in leaving:  # the clients go away: requests cancelled, connections closed
            request.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        sixth_s = await generate(200)
        jobs_for_nobody = cluster.jobs_done() - before - 1
        timed += [await generate(seed) for seed in (4, 5, 6)]
    return Figure(
        version=version,
        code=str(cluster.code),
        generation_s=median(timed),
        sixth_s=sixth_s,
        jobs_for_nobody=jobs_for_nobody,
    )


def run_version(code: Path, tmp: Path, label: str, steps: int) -> Figure:
    cluster = Cluster(code, tmp, label)
    try:
        cluster.start()
        return asyncio.run(measure(cluster, steps, label))
    except Exception:
        for proc in (cluster.router, cluster.node):
            if proc is not None:
                print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        cluster.stop()


@contextlib.contextmanager
def baseline_checkout(revision: str, tmp: Path) -> Any:
    path = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)


def report(figures: list[Figure], steps: int) -> dict[str, Any]:
    print(f"\nA 6th request behind {ABANDONED} abandoned ones (64x64, {steps} steps; T = one generation)")
    print(f"{'version':<10} {'T (s)':>7} {'6th (s)':>8} {'6th / T':>8} {'jobs run for nobody':>20}")
    for f in figures:
        print(
            f"{f.version:<10} {f.generation_s:>7.2f} {f.sixth_s:>8.2f} {f.in_generations:>8.2f} "
            f"{f.jobs_for_nobody:>20d}"
        )
    by_version: dict[str, list[Figure]] = {}
    for f in figures:
        by_version.setdefault(f.version, []).append(f)
    before = median([f.in_generations for f in by_version["baseline"]])
    after = median([f.in_generations for f in by_version["current"]])
    print(f"median: before {before:.2f} T, after {after:.2f} T; before / after = {before / after:.2f}")
    return {"before_in_T": before, "after_in_T": after, "ratio": before / after}


def run_bench(args: argparse.Namespace) -> int:
    ensure_demo_model()
    tmp = Path(tempfile.mkdtemp(prefix="llmlb-abandoned-"))
    figures: list[Figure] = []
    try:
        with baseline_checkout(args.baseline, tmp) as baseline:
            versions = [("baseline", baseline), ("current", REPO)]
            for round_ in range(args.rounds):
                for label, code in versions if round_ % 2 == 0 else versions[::-1]:
                    print(f"round {round_ + 1}: {label} ({code}) ...", flush=True)
                    figures.append(run_version(code, tmp, label, args.steps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = report(figures, args.steps)
    if args.json:
        payload = {
            "benchmark": "abandoned",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {"baseline": args.baseline, "steps": args.steps, "rounds": args.rounds},
            "figures": [asdict(f) | {"in_generations": f.in_generations} for f in figures],
            **summary,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def serve_from(code: str, cli_args: list[str]) -> None:
    """Run ``llmlb_core.cli`` from the checkout ``code`` (its packages shadow this tree's)."""
    import_from_tree(Path(code))
    spec = importlib.util.find_spec("llmlb_core.cli")
    print(f"llmlb code: {spec.origin if spec else '?'}", file=sys.stderr, flush=True)
    sys.argv = ["llmlb", *cli_args]
    runpy.run_module("llmlb_core.cli", run_name="__main__", alter_sys=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.abandoned", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of one generation (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per version (default 2)")
    parser.add_argument("--baseline", default=BASELINE, help=f"baseline revision (default {BASELINE})")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve-from"]:
        with contextlib.suppress(KeyboardInterrupt):  # how the bench stops its servers
            serve_from(argv[1], argv[2:])
        return 0
    return run_bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
