"""Stopping image jobs: what the worker process costs, and what stopping mid-image buys.

Run: ``.venv/bin/python -m bench.stop_now`` (``--rounds K`` generations per way at 64x64,
``--rounds-512 K`` at 512x512, ``--cap S`` how long to wait for ``next_image`` to free its node,
``--json PATH`` keeps the numbers). Two parts, both with this tree's code and the synthetic demo checkpoint:

1. **The worker's cost on normal generations.** Two engines in this process, one per ``cancel``
   mode, both loaded: ``next_image`` runs stable-diffusion.cpp in this process, ``now`` in its
   worker process. They take turns (ABBA) generating the same image: 64x64 at 4 steps and
   512x512 at 1 step (one 512x512 step takes about 35 s on 2 cores, its TAESD decode 20 s).
   Reported: the median seconds per image of each and the ratio now / next_image.
2. **An abandoned 1024x1024 30-step image.** A router and one node (real processes on
   loopback; the node heartbeats every 10 s, as the router asks), first with ``cancel = now``,
   then with ``next_image``. A client sends the image and leaves once the node's worker (or the
   node) has computed for 2 CPU-seconds. Reported: seconds from the client leaving until the
   router's ``/v0/nodes`` shows the node free (``next_image``: "> cap" when the image outlasts
   ``--cap``; one such image takes minutes here), the node's reload time (its log line), and the
   latency of a 64x64 request sent then (only once the node is free), and whether the router
   queued it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    ServerProcess,
    cpu_seconds,
    create_key,
    free_port,
    median,
    online_node_names,
    wait_until,
)
from bench.node_bench import DEMO_DIR, ensure_demo_model

ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"  # loopback, throw-away data dir
SIZES = ((64, 4), (512, 1))  # (size, steps) of part 1; 512x512: --rounds-512
LARGE = {"size": "1024x1024", "steps": 30}
LEAVE_AFTER_CPU_S = 2.0
STOPPED = re.compile(r"stopped mid-image \(client gone\) after [\d.]+s, .*model reloaded in ([\d.]+)s")


@dataclass
class Cost:
    size: int
    steps: int
    in_process_s: float
    worker_s: float

    @property
    def ratio(self) -> float:
        return self.worker_s / self.in_process_s


@dataclass
class Stop:
    cancel: str
    freed_s: float | None  # None: not within the cap
    reload_s: float | None
    next_s: float | None  # None: not sent (the node was not free within the cap)
    next_queued: bool | None


# --- part 1 -------------------------------------------------------------------------------------


async def worker_cost(rounds: int, rounds_512: int) -> list[Cost]:
    from llmlb_node.stable_diffusion.engine.engine import SDEngine
    from llmlb_node.stable_diffusion.jobs.job import GenerateArgs, SDJob
    from llmlb_node.stable_diffusion.models.model_folder import scan_models

    [demo] = [f for f in scan_models(DEMO_DIR.parent).models if f.id == DEMO_DIR.name]
    engines = {mode: SDEngine(threads=0, idle_unload_s=0, cancel=mode) for mode in ("next_image", "now")}

    def job(size: int, steps: int, seed: int) -> SDJob:
        args = GenerateArgs(
            prompt="a lighthouse",
            negative_prompt="",
            width=size,
            height=size,
            cfg_scale=1.0,
            sample_method="euler",
            sample_steps=steps,
            seed=seed,
        )
        return SDJob(args)

    costs = []
    try:
        for engine in engines.values():
            await engine.generate(demo, job(64, 1, 0))  # load, and the first-image warm-up
        for size, steps in SIZES:
            times: dict[str, list[float]] = {mode: [] for mode in engines}
            for round_ in range(rounds_512 if size >= 512 else rounds):
                order = list(engines.items())
                for mode, engine in order if round_ % 2 == 0 else order[::-1]:
                    started = time.monotonic()
                    await engine.generate(demo, job(size, steps, round_))
                    times[mode].append(time.monotonic() - started)
                    print(f"  {size}x{size} {steps} step(s), {mode}: {times[mode][-1]:.2f}s", flush=True)
            costs.append(Cost(size, steps, median(times["next_image"]), median(times["now"])))
    finally:
        for engine in engines.values():
            await engine.stop()
    return costs


# --- part 2 -------------------------------------------------------------------------------------


class Cluster:
    """A router and one node of this tree, the node with ``cancel``."""

    def __init__(self, tmp: Path, cancel: str) -> None:
        self.tmp, self.cancel = tmp, cancel
        port = free_port()
        self.router = ServerProcess(
            f"router-{cancel}",
            "llmlb_core.cli",
            ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp / f"data-{cancel}")],
            tmp / f"router-{cancel}.log",
            f"http://127.0.0.1:{port}",
            env={"LLMLB_ADMIN_KEY": ADMIN_KEY},
        )
        self.node: ServerProcess | None = None

    def __enter__(self) -> Cluster:
        self.router.start().wait_healthy()
        key = create_key(self.router.url, ADMIN_KEY, "bench-node", ["node"])
        port = free_port()
        self.node = ServerProcess(
            f"node-{self.cancel}",
            "llmlb_core.cli",
            [
                *("node", "--router", self.router.url, "--host", "127.0.0.1", "--port", str(port)),
                *("--api-key", key, "--models-dir", str(DEMO_DIR.parent), "--name", "bench-node"),
                *("--cancel", self.cancel),
            ],
            self.tmp / f"node-{self.cancel}.log",
            f"http://127.0.0.1:{port}",
        )
        self.node.start().wait_healthy(60)
        wait_until(lambda: "bench-node" in online_node_names(self.router.url, ADMIN_KEY), 30, "node online")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.node, self.router):
            if proc is not None:
                proc.stop()

    def node_state(self) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        [node] = httpx.get(f"{self.router.url}/v0/nodes", headers=headers, timeout=5).json()["data"]
        return dict(node)

    def computing_pid(self) -> int:
        """The process that runs stable-diffusion.cpp: the node's worker, or the node."""
        assert self.node is not None
        status = httpx.get(f"{self.node.url}/health", timeout=5).json()["runtime_status"]["stable_diffusion"]
        return int(status["worker_pid"] or self.node.pid)


async def abandoned_large(cluster: Cluster, cap_s: float) -> Stop:
    key = create_key(cluster.router.url, ADMIN_KEY, "bench-client", ["api"])
    body = {"model": "demo", "prompt": "a lighthouse", "steps": 4, "response_format": "b64_json"}
    async with httpx.AsyncClient(
        base_url=cluster.router.url, headers={"authorization": f"Bearer {key}"}, timeout=3600
    ) as client:
        (await client.post("/v1/images/generations", json=body)).raise_for_status()  # loads
        pid = cluster.computing_pid()
        start_cpu = cpu_seconds(pid)
        large = asyncio.create_task(client.post("/v1/images/generations", json={**body, **LARGE}))
        while cpu_seconds(pid) - start_cpu < LEAVE_AFTER_CPU_S:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        left = time.monotonic()
        large.cancel()  # the client goes away: its connection is closed
        with contextlib.suppress(asyncio.CancelledError):
            await large
        freed_s: float | None = None
        while time.monotonic() - left < cap_s:
            state = cluster.node_state()
            if state["abandoned"] == 0 and state["free_slots"] == 1:
                freed_s = time.monotonic() - left
                break
            await asyncio.sleep(0.05)
        next_s: float | None = None
        queued: bool | None = None
        if freed_s is not None:
            sent = time.monotonic()
            answer = await client.post("/v1/images/generations", json={**body, "seed": 7})
            next_s = time.monotonic() - sent
            answer.raise_for_status()
            queued = "x-queue-status" in answer.headers
    assert cluster.node is not None
    reload = STOPPED.search(cluster.node.log_tail(1_000_000))
    return Stop(
        cancel=cluster.cancel,
        freed_s=freed_s,
        reload_s=float(reload.group(1)) if reload else None,
        next_s=next_s,
        next_queued=queued,
    )


# --- the run ------------------------------------------------------------------------------------


def show(value: float | None, cap_s: float) -> str:
    return f"{value:.2f}" if value is not None else f"> {cap_s:g}"


def report(costs: list[Cost], stops: list[Stop], cap_s: float) -> None:
    print("\n1. The worker process on a normal generation (median seconds per image, same run)")
    columns = ("next_image (in-process)", 24), ("now (worker)", 13), ("now / next_image", 17)
    print(f"{'size, steps':<16} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for c in costs:
        label = f"{c.size}x{c.size}, {c.steps}"
        print(f"{label:<16} {c.in_process_s:>24.2f} {c.worker_s:>13.2f} {c.ratio:>17.2f}")
    print("\n2. A 1024x1024 30-step image whose client leaves mid-image (seconds)")
    print(f"{'cancel':<11} {'node free (router)':>19} {'reload':>7} {'next 64x64 request':>19} {'queued':>7}")
    for s in stops:
        reload = f"{s.reload_s:.2f}" if s.reload_s is not None else "-"
        next_s = f"{s.next_s:.2f}" if s.next_s is not None else "(not sent)"
        queued = "-" if s.next_queued is None else str(s.next_queued)
        print(f"{s.cancel:<11} {show(s.freed_s, cap_s):>19} {reload:>7} {next_s:>19} {queued:>7}")


def run_bench(args: argparse.Namespace) -> int:
    ensure_demo_model()
    print("1. worker cost ...", flush=True)
    costs = asyncio.run(worker_cost(args.rounds, args.rounds_512))
    stops = []
    tmp = Path(tempfile.mkdtemp(prefix="llmlb-stop-now-"))
    try:
        for cancel in ("now", "next_image"):
            print(f"2. abandoned 1024x1024, cancel = {cancel} ...", flush=True)
            with Cluster(tmp, cancel) as cluster:
                stops.append(asyncio.run(abandoned_large(cluster, args.cap)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(costs, stops, args.cap)
    if args.json:
        payload = {
            "benchmark": "stop_now",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {"rounds": args.rounds, "rounds_512": args.rounds_512, "cap_s": args.cap},
            "worker_cost": [asdict(c) | {"ratio": c.ratio} for c in costs],
            "abandoned_1024": [asdict(s) for s in stops],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stop_now", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--rounds", type=int, default=8, help="generations per way at 64x64 (default 8)")
    parser.add_argument(
        "--rounds-512", type=int, default=2, help="generations per way at 512x512 (default 2; ~40 s each)"
    )
    parser.add_argument(
        "--cap", type=float, default=60.0, help="seconds to wait for next_image to free its node (default 60)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
