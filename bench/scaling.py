"""Router scaling: throughput over 1, 2 and 4 nodes, fan-out of ``n=4``, router memory over 10k requests.

Run: ``.venv/bin/python -m bench.scaling`` (``--quick`` for a short run, ``--json PATH`` to keep
the numbers, ``--tracemalloc`` to see where router memory grows). It measures the router, not the
CPU: every node runs a bench runtime (``fixed``, defined here) with a **fixed service time** per
image (``asyncio.sleep(t * n)``) and one slot, advertising model ``bench-fixed`` with capability
``image_generation`` (the model flag of the images capability, like the ``stable_diffusion``
runtime). So requests go through the real router - the images plugin's
``POST /v1/images/generations`` (validation, seed, fan-out of ``n > 1`` over idle nodes, merging),
``context.forward.call``, the balancer and its wait queue - and the nodes answer like the stable_diffusion
runtime (an OpenAI images response, one tiny PNG per image, ``size``, ``output_format``).

Every process is separate, on loopback, with real uvicorn: the router (``create_app`` with the
default plugins, queue_max 10000) and each node run this module again in internal sub-modes
(``--serve-router``, ``--serve-node``). Phases:

1. **Scaling**: k = 1, 2, 4 nodes (service time t, default 0.2 s), closed-loop load with
   concurrency C = 2k for a fixed number of ``n=1`` requests: throughput against the ideal k / t
   (efficiency; target >= 0.9 at k = 4), queue wait (the router's ``x-queue-wait-ms``, 0 when
   absent) and latency p50 / p99, router CPU per request, how evenly nodes and clients were
   served (Jain's index, 1.0 = perfectly even); plus k = 4 with a deep queue (C = 256, or 64
   with ``--quick``) to show what a long wait queue costs the router.
2. **Fan-out**: one ``n=4`` request at a time, on 1 node and on 4 idle nodes: latency ratio
   (ideal 0.25; target <= 0.35) and whether the parts were spread over 4 nodes.
3. **Memory**: fast nodes (t ~ 1 ms), concurrency 16: the router's RSS after warm-up, after 5,000
   and after 10,000 requests (and in between); growth from 5k to 10k (target <= 10%).

Each node also reports how many jobs it was running when a request arrived (in the image's
``revised_prompt``): more than its one slot means the balancer over-committed it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import math
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from bench import _common
from bench._common import (
    REPO,
    ServerProcess,
    cpu_seconds,
    create_key,
    free_port,
    list_nodes,
    online_node_names,
    percentile,
    rss_bytes,
    run_async,
    wait_until,
)
from llmlb_node.api import (
    ModelAdvert,
    NoSettings,
    Runtime,
    RuntimeContext,
    RuntimeLoad,
    RuntimeType,
    decode_json_bytes,
)
from llmlb_node.api import hookimpl as node_hookimpl
from llmlb_plugins.images.protocol import ImageData, ImageGenerationRequest, ImagesResponse

MODEL = "bench-fixed"
RUNTIME = "fixed"
CAPABILITIES = ["image_generation"]
# The router runs on loopback with a throw-away data dir; its admin key need not be secret.
ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"
NODE_TIMEOUT_S = 30.0
QUEUE_MAX = 10_000
QUEUE_TIMEOUT_S = 600.0
TINY_SIZE = 8
PROMPT = "a tiny square"

TARGET_EFFICIENCY = 0.9
TARGET_FANOUT_RATIO = 0.35
TARGET_MEMORY_GROWTH = 0.10


class BenchError(RuntimeError):
    """A request failed or answered something unexpected."""


# --------------------------------------------------------------------------- node runtime plugin


def tiny_png_b64() -> str:
    """One 8x8 PNG, base64: what every image of the bench nodes is."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (TINY_SIZE, TINY_SIZE), (200, 80, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class FixedRuntime(Runtime):
    """Answers ``POST /v1/images/generations`` after ``service_s * n`` seconds, like an SD node would."""

    type_name = RUNTIME
    slots = 1

    def __init__(self, context: RuntimeContext[NoSettings], service_s: float) -> None:
        self.node_name = context.node_name
        self.service_s = service_s
        self.active = 0
        self.png = tiny_png_b64()

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id=MODEL, capabilities=CAPABILITIES, runtime="stable_diffusion")]

    def load(self) -> RuntimeLoad:
        return RuntimeLoad(active_jobs=self.active)

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        @post("/v1/images/generations", status_code=200)
        async def generations(request: Request[Any, Any, Any]) -> Response[bytes]:
            req = decode_json_bytes(await request.body(), ImageGenerationRequest)
            runtime.active += 1
            concurrent = runtime.active  # > slots: the router over-committed this node
            try:
                if runtime.service_s > 0:
                    await asyncio.sleep(runtime.service_s * req.n)
            finally:
                runtime.active -= 1
            seed = req.seed or 0
            note = f"node={runtime.node_name};active={concurrent}"
            body = ImagesResponse(
                created=int(time.time()),
                data=[
                    ImageData(b64_json=runtime.png, seed=seed + i, revised_prompt=note) for i in range(req.n)
                ],
                size=req.size if req.size and req.size != "auto" else f"{TINY_SIZE}x{TINY_SIZE}",
                quality="standard",
                output_format="png",
                background="opaque",
            )
            return Response(content=msgspec.json.encode(body), media_type="application/json")

        return [generations]


class FixedRuntimePlugin:
    """Node side: registers runtime type ``fixed``."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s

    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(
            RuntimeType(
                name=RUNTIME,
                factory=lambda context: FixedRuntime(context, self.service_s),
                description="fixed service time (benchmark)",
            )
        )


# --------------------------------------------------------------------------- server sub-modes


def _install_snapshot_handler(data_dir: Path) -> None:
    """SIGUSR1 writes a tracemalloc snapshot to ``data_dir/tracemalloc-<k>.snap`` (k = 1, 2, ...)."""
    counter = itertools.count(1)

    def dump(signum: int, frame: FrameType | None) -> None:
        import gc

        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        path = data_dir / f"tracemalloc-{next(counter)}.snap"
        tmp = path.with_suffix(".partial")
        snapshot.dump(str(tmp))
        os.replace(tmp, path)

    signal.signal(signal.SIGUSR1, dump)


def serve_router(port: int, data_dir: str, tracemalloc_frames: int) -> None:
    if tracemalloc_frames > 0:
        tracemalloc.start(tracemalloc_frames)
        _install_snapshot_handler(Path(data_dir))
    _common.serve_router(
        port,
        data_dir,
        ADMIN_KEY,
        queue_max=QUEUE_MAX,
        queue_timeout_s=QUEUE_TIMEOUT_S,
        node_timeout_s=NODE_TIMEOUT_S,
        plugin={"images": {"default_response_format": "b64_json"}},
    )


def serve_node(port: int, router_url: str, api_key: str, name: str, service_s: float) -> None:
    # The host side (what `llmlb node` does): internal modules, unlike the plugins above.
    run = _common.core_module("server.serving", "serving").run
    from llmlb_node.app import create_node_app
    from llmlb_node.settings import NodeSettings

    _common.server_logging()
    settings = NodeSettings(
        router_url=router_url,
        api_key=api_key,
        host="127.0.0.1",
        port=port,
        name=name,
        runtimes=[RUNTIME],
        models_dir="/nonexistent",
    )
    app = create_node_app(settings, extra_plugins=[FixedRuntimePlugin(service_s)])
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        drain=app.state.node_drain,
        graceful_timeout_s=5,
    )


# --------------------------------------------------------------------------- processes


class Cluster:
    """The router process and the node processes currently attached to it."""

    def __init__(self, tmp: Path, tracemalloc_frames: int) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "router-data"
        port = free_port()
        self.router = ServerProcess(
            "router",
            "bench.scaling",
            ["--serve-router", str(port), str(self.data_dir), str(tracemalloc_frames)],
            tmp / "router.log",
            f"http://127.0.0.1:{port}",
        )
        self.nodes: list[ServerProcess] = []
        self.node_key = ""
        self.api_key = ""
        self._names = itertools.count(1)
        self._snapshots = 0

    def start(self) -> None:
        self.router.start().wait_healthy()
        self.node_key = create_key(self.router.url, ADMIN_KEY, "bench-nodes", ["node"])
        self.api_key = create_key(self.router.url, ADMIN_KEY, "bench-client", ["api"])

    def add_nodes(self, count: int, service_s: float) -> None:
        started = []
        for _ in range(count):
            port = free_port()
            name = f"fixed-{next(self._names)}"
            node = ServerProcess(
                name,
                "bench.scaling",
                ["--serve-node", str(port), self.router.url, self.node_key, name, repr(service_s)],
                self.tmp / f"{name}.log",
                f"http://127.0.0.1:{port}",
            )
            self.nodes.append(node)
            started.append(node.start())
        for node in started:
            node.wait_healthy()
        names = {n.name for n in self.nodes}
        wait_until(lambda: names <= online_node_names(self.router.url, ADMIN_KEY), 30, "nodes online")

    def remove_nodes(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        wait_until(lambda: not list_nodes(self.router.url, ADMIN_KEY), 30, "nodes deregistered")

    def check_alive(self) -> None:
        self.router.check_alive()
        for node in self.nodes:
            node.check_alive()

    def snapshot(self) -> Path:
        """Ask the router (started with tracemalloc) for a snapshot; its file once written."""
        self._snapshots += 1
        path = self.data_dir / f"tracemalloc-{self._snapshots}.snap"
        os.kill(self.router.pid, signal.SIGUSR1)
        wait_until(path.exists, 120, f"tracemalloc snapshot {path.name}")
        return path

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        self.router.stop()


# --------------------------------------------------------------------------- load


@dataclass
class Sample:
    latency_s: float
    queue_ms: float
    nodes: tuple[str, ...]
    worker: int
    max_active: int  # the most jobs a node reported running when this request's part arrived


@dataclass
class Load:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    router_cpu_s: float = 0.0

    def latencies_ms(self) -> list[float]:
        return [s.latency_s * 1000 for s in self.samples]

    def queue_ms(self) -> list[float]:
        return [s.queue_ms for s in self.samples]


def jain(counts: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all equal, 1/len when one got everything."""
    if not counts or not any(counts):
        return math.nan
    return sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))


def load_client(concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    """The load generator's client: the httpx API over aiohttp's transport.

    httpx's own transport (httpcore 1.0) is not fit for this: with 64 requests in flight on
    64 keep-alive connections, a tenth of them reached the router only 2-4 s after they were
    sent (measured with arrival timestamps taken in the router), which showed up as router
    latency and client unfairness. Over aiohttp the same load reaches the router within ~40 ms.
    """
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=concurrency + 16, max_keepalive_connections=concurrency + 16)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        limits=limits,
        timeout=httpx.Timeout(timeout_s, connect=10),
        trust_env=False,
    )


class Client:
    def __init__(self, http: httpx.AsyncClient, router_url: str, api_key: str) -> None:
        self.http = http
        self.url = f"{router_url}/v1/images/generations"
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self._bodies: dict[int, bytes] = {}

    def body(self, n: int) -> bytes:
        if n not in self._bodies:
            self._bodies[n] = msgspec.json.encode(
                {"model": MODEL, "prompt": PROMPT, "n": n, "size": "256x256", "response_format": "b64_json"}
            )
        return self._bodies[n]

    async def one(self, n: int, worker: int = 0) -> Sample:
        started = time.perf_counter()
        response = await self.http.post(self.url, content=self.body(n), headers=self.headers)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"HTTP {response.status_code}: {response.text[:400]}")
        data = response.json().get("data") or []
        if len(data) != n or not all(d.get("b64_json") for d in data):
            raise BenchError(f"expected {n} image(s): {response.text[:300]}")
        seeds = [d.get("seed") for d in data]
        if seeds[0] is None or seeds != list(range(seeds[0], seeds[0] + n)):
            raise BenchError(f"image seeds are not consecutive after merging: {seeds}")
        max_active = 0
        for d in data:
            note = dict(
                part.split("=", 1) for part in (d.get("revised_prompt") or "").split(";") if "=" in part
            )
            max_active = max(max_active, int(note.get("active", 0)))
        nodes = tuple(response.headers.get("x-llmlb-node", "").split(","))
        queue = float(response.headers.get("x-queue-wait-ms", 0) or 0)
        return Sample(latency, queue, nodes, worker, max_active)

    async def closed_loop(self, total: int, concurrency: int, router_pid: int, n: int = 1) -> Load:
        """``total`` requests, ``concurrency`` of them in flight at any time."""
        load = Load()
        remaining = total

        async def worker(index: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                load.samples.append(await self.one(n, index))

        cpu = cpu_seconds(router_pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(min(concurrency, total))))
        load.wall_s = time.perf_counter() - started
        load.router_cpu_s = cpu_seconds(router_pid) - cpu
        return load


# --------------------------------------------------------------------------- phases


def scaling_row(k: int, concurrency: int, t: float, load: Load) -> dict[str, Any]:
    count = len(load.samples)
    throughput = count / load.wall_s
    ideal = k / t
    per_node = Counter(node for s in load.samples for node in s.nodes)
    per_worker = Counter(s.worker for s in load.samples)
    lat, queue = load.latencies_ms(), load.queue_ms()
    return {
        "nodes": k,
        "concurrency": concurrency,
        "requests": count,
        "wall_s": load.wall_s,
        "throughput_rps": throughput,
        "ideal_rps": ideal,
        "efficiency": throughput / ideal,
        # How long each node waited between the end of one job and the start of the next.
        "gap_ms": (k / throughput - t) * 1000,
        "queue_p50_ms": percentile(queue, 50),
        "queue_p99_ms": percentile(queue, 99),
        "queued_share": sum(1 for q in queue if q > 0) / count,
        # Closed loop: every client waits for (C - k) jobs ahead of it, t/k apart.
        "queue_expected_ms": max(0, concurrency - k) * t / k * 1000,
        "latency_p50_ms": percentile(lat, 50),
        "latency_p99_ms": percentile(lat, 99),
        "latency_max_ms": max(lat),
        "router_cpu_ms_per_req": load.router_cpu_s * 1000 / count,
        "node_jain": jain(list(per_node.values())) if len(per_node) == k else 0.0,
        "per_node": dict(sorted(per_node.items())),
        "client_jain": jain(list(per_worker.values())),
        "slot_overcommits": sum(1 for s in load.samples if s.max_active > 1),
    }


async def phase_scaling_and_fanout(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    t = args.service_ms / 1000
    rounds = args.rounds or (12 if args.quick else 40)
    fan_reps = args.fanout_reps or (5 if args.quick else 12)
    deep = args.deep or (64 if args.quick else 256)
    rows: list[dict[str, Any]] = []
    fanout: dict[str, Any] = {}
    async with load_client(deep, QUEUE_TIMEOUT_S + 60) as http:
        client = Client(http, cluster.router.url, cluster.api_key)

        async def fan(k: int) -> list[Sample]:
            print(f"  fan-out: {fan_reps} x one n=4 request on {k} idle node(s) ...", flush=True)
            await client.one(4)  # warm-up
            return [await client.one(4) for _ in range(fan_reps)]

        async def scale(k: int, concurrency: int) -> None:
            total = max(rounds * k, 3 * concurrency)
            total -= total % k  # whole rounds: no node idles at the end for want of work
            print(f"  k={k} C={concurrency}: {total} requests ...", flush=True)
            await client.closed_loop(2 * concurrency, concurrency, cluster.router.pid)  # warm-up
            load = await client.closed_loop(total, concurrency, cluster.router.pid)
            cluster.check_alive()
            rows.append(scaling_row(k, concurrency, t, load))

        print(f"phase 1+2: nodes with a fixed service time of {args.service_ms:g} ms per image", flush=True)
        cluster.add_nodes(1, t)
        single = await fan(1)
        await scale(1, 2)
        cluster.add_nodes(1, t)
        await scale(2, 4)
        cluster.add_nodes(2, t)
        await scale(4, 8)
        await scale(4, deep)
        spread = await fan(4)

    single_ms = [s.latency_s * 1000 for s in single]
    spread_ms = [s.latency_s * 1000 for s in spread]
    fanout = {
        "reps": fan_reps,
        "single_median_ms": percentile(single_ms, 50),
        "single_p90_ms": percentile(single_ms, 90),
        "spread_median_ms": percentile(spread_ms, 50),
        "spread_p90_ms": percentile(spread_ms, 90),
        "ratio": percentile(spread_ms, 50) / percentile(single_ms, 50),
        "ideal_single_ms": 4 * args.service_ms,
        "ideal_spread_ms": args.service_ms,
        "nodes_per_request": dict(sorted(Counter(len(set(s.nodes)) for s in spread).items())),
        "slot_overcommits": sum(1 for s in single + spread if s.max_active > 1),
    }
    return {"scaling": rows, "fanout": fanout}


async def phase_memory(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    step = args.memory_requests // 5
    concurrency = args.memory_concurrency
    print(
        f"phase 3: router memory, {args.memory_nodes} nodes at {args.memory_service_ms:g} ms, "
        f"concurrency {concurrency}, {2 * args.memory_requests} requests ...",
        flush=True,
    )
    cluster.remove_nodes()
    cluster.add_nodes(args.memory_nodes, args.memory_service_ms / 1000)
    points: list[dict[str, float]] = []
    snapshots: list[Path] = []
    total_cpu = total_wall = 0.0
    queue: list[float] = []
    lat: list[float] = []
    async with load_client(concurrency, 120) as http:
        client = Client(http, cluster.router.url, cluster.api_key)
        await client.closed_loop(args.memory_warmup, concurrency, cluster.router.pid)
        await asyncio.sleep(1.0)
        done = 0
        points.append({"requests": 0, "rss_bytes": rss_bytes(cluster.router.pid)})
        if args.tracemalloc:
            snapshots.append(cluster.snapshot())
        while done < 2 * args.memory_requests:
            load = await client.closed_loop(step, concurrency, cluster.router.pid)
            done += step
            total_cpu += load.router_cpu_s
            total_wall += load.wall_s
            queue.extend(load.queue_ms())
            lat.extend(load.latencies_ms())
            points.append({"requests": done, "rss_bytes": rss_bytes(cluster.router.pid)})
            print(f"    {done:6d} requests: router RSS {points[-1]['rss_bytes'] / 2**20:.1f} MiB", flush=True)
            if args.tracemalloc and done in (args.memory_requests, 2 * args.memory_requests):
                snapshots.append(cluster.snapshot())
            cluster.check_alive()
    by_count = {int(p["requests"]): p["rss_bytes"] for p in points}
    mid, end = by_count[args.memory_requests], by_count[2 * args.memory_requests]
    result: dict[str, Any] = {
        "nodes": args.memory_nodes,
        "service_ms": args.memory_service_ms,
        "concurrency": concurrency,
        "requests": 2 * args.memory_requests,
        "points": points,
        "rss_0_bytes": by_count[0],
        "rss_mid_bytes": mid,
        "rss_end_bytes": end,
        "growth": (end - mid) / mid,
        "throughput_rps": 2 * args.memory_requests / total_wall,
        "router_cpu_ms_per_req": total_cpu * 1000 / (2 * args.memory_requests),
        "queue_p50_ms": percentile(queue, 50),
        "queue_p99_ms": percentile(queue, 99),
        "latency_p50_ms": percentile(lat, 50),
        "latency_p99_ms": percentile(lat, 99),
    }
    if snapshots:
        result["tracemalloc"] = tracemalloc_report(snapshots)
    return result


def tracemalloc_report(paths: Sequence[Path], top: int = 12) -> dict[str, Any]:
    """What grew in the router between its snapshots (0 -> mid, mid -> end)."""
    snaps = [tracemalloc.Snapshot.load(str(p)) for p in paths]
    noise = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    snaps = [s.filter_traces(noise) for s in snaps]
    out: dict[str, Any] = {}
    for label, (a, b) in (("0->mid", (snaps[0], snaps[1])), ("mid->end", (snaps[1], snaps[-1]))):
        stats = b.compare_to(a, "traceback")
        out[label] = {
            "total_diff_bytes": sum(s.size_diff for s in stats),
            "top": [
                {
                    "size_diff": s.size_diff,
                    "count_diff": s.count_diff,
                    "traceback": [f"{f.filename}:{f.lineno}" for f in s.traceback],
                }
                for s in stats[:top]
            ],
        }
    return out


# --------------------------------------------------------------------------- report


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def _short(location: str) -> str:
    """``path:line`` relative to the repository or to site-packages."""
    for marker in ("/site-packages/", f"{REPO}/", f"{sysconfig.get_paths()['stdlib']}/"):
        if marker in location:
            return location.split(marker, 1)[1]
    return location


def _report_scaling(
    rows: list[dict[str, Any]], args: argparse.Namespace, checks: list[str]
) -> dict[str, Any]:
    print(f"\nscaling (n=1 requests, service time t = {args.service_ms:g} ms, 1 slot per node)")
    print(
        f"  {'k':>2} {'C':>4} {'reqs':>5} {'req/s':>7} {'ideal':>6} {'eff.':>6} "
        f"{'gap ms':>6} {'queue p50/p99 ms':>17} {'(expect)':>9} {'latency p50/p99 ms':>19} "
        f"{'router CPU ms/req':>18} {'nodes J':>8} {'clients J':>9}"
    )
    for r in rows:
        print(
            f"  {r['nodes']:2d} {r['concurrency']:4d} {r['requests']:5d} {r['throughput_rps']:7.2f} "
            f"{r['ideal_rps']:6.1f} {r['efficiency']:6.3f} {r['gap_ms']:6.1f} "
            f"{r['queue_p50_ms']:8.1f}/{r['queue_p99_ms']:<8.1f} {r['queue_expected_ms']:8.0f} "
            f"{r['latency_p50_ms']:9.1f}/{r['latency_p99_ms']:<9.1f} "
            f"{r['router_cpu_ms_per_req']:18.2f} {r['node_jain']:8.3f} {r['client_jain']:9.3f}"
        )
    print(
        "  gap: time a node waits between jobs (k / throughput - t); expect: FIFO queue wait in a closed "
        "loop, (C - k) * t / k; J: Jain's index over requests per node / per client (1 = even)"
    )
    for r in rows:
        if r["slot_overcommits"]:
            print(
                f"  !! k={r['nodes']} C={r['concurrency']}: {r['slot_overcommits']} request(s) "
                "found their 1-slot node busy"
            )
    target_row = next((r for r in rows if r["nodes"] == 4 and r["concurrency"] == 8), None)
    if target_row is None:
        return {}
    ok = target_row["efficiency"] >= TARGET_EFFICIENCY
    checks.append(f"efficiency at k=4 {target_row['efficiency']:.3f} {'PASS' if ok else 'FAIL'}")
    return {"efficiency_ok": ok}


def _report_fanout(f: dict[str, Any], checks: list[str]) -> dict[str, Any]:
    print(f"\nfan-out (one n=4 request at a time, {f['reps']} reps)")
    print(f"  {'':22}{'median ms':>10}{'p90 ms':>9}{'ideal ms':>10}")
    for label, key, ideal in (
        ("1 node", "single", "ideal_single_ms"),
        ("4 idle nodes", "spread", "ideal_spread_ms"),
    ):
        print(f"  {label:22}{f[f'{key}_median_ms']:10.1f}{f[f'{key}_p90_ms']:9.1f}{f[ideal]:10.0f}")
    spread = ", ".join(f"{v} request(s) over {k} node(s)" for k, v in f["nodes_per_request"].items())
    print(f"  ratio of medians {f['ratio']:.3f}x (ideal 0.25x); parts spread: {spread}")
    if f["slot_overcommits"]:
        print(f"  !! {f['slot_overcommits']} request(s) found their 1-slot node busy")
    ok = f["ratio"] <= TARGET_FANOUT_RATIO
    checks.append(f"fan-out ratio {f['ratio']:.3f} {'PASS' if ok else 'FAIL'}")
    return {"fanout_ok": ok}


def _report_memory(m: dict[str, Any], args: argparse.Namespace, checks: list[str]) -> dict[str, Any]:
    print(
        f"\nrouter memory ({m['nodes']} nodes at {m['service_ms']:g} ms, concurrency {m['concurrency']}; "
        f"{m['throughput_rps']:.0f} req/s, router CPU {m['router_cpu_ms_per_req']:.2f} ms/req, "
        f"queue p50/p99 {m['queue_p50_ms']:.1f}/{m['queue_p99_ms']:.1f} ms)"
    )
    print("  " + "  ".join(f"{int(p['requests']):>6}" for p in m["points"]) + "   requests")
    print("  " + "  ".join(f"{_mib(p['rss_bytes']):>6}" for p in m["points"]) + "   RSS MiB")
    print(
        f"  RSS at 0 / {args.memory_requests} / {2 * args.memory_requests}: {_mib(m['rss_0_bytes'])} / "
        f"{_mib(m['rss_mid_bytes'])} / {_mib(m['rss_end_bytes'])} MiB; growth {m['growth'] * 100:+.1f}%"
    )
    if "tracemalloc" in m:
        print("  (tracemalloc was on: RSS includes its bookkeeping, and the router ran slower)")
        for label, diff in m["tracemalloc"].items():
            print(f"  tracemalloc {label}: {diff['total_diff_bytes'] / 1024:+.1f} KiB in total; top:")
            for entry in diff["top"][:8]:
                frames = entry["traceback"]
                own = [x for x in frames if f"{REPO}/" in x and "/site-packages/" not in x]
                where = _short(frames[-1]) + (
                    f" (from {_short(own[-1])})" if own and own[-1] != frames[-1] else ""
                )
                print(f"    {entry['size_diff'] / 1024:+9.1f} KiB {entry['count_diff']:+7d} blocks  {where}")
    ok = m["growth"] <= TARGET_MEMORY_GROWTH
    checks.append(f"memory growth {m['growth'] * 100:+.1f}% {'PASS' if ok else 'FAIL'}")
    return {"memory_ok": ok}


def print_report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    verdict: dict[str, Any] = {}
    checks: list[str] = []
    if "scaling" in result:
        verdict |= _report_scaling(result["scaling"], args, checks)
    if "fanout" in result:
        verdict |= _report_fanout(result["fanout"], checks)
    if "memory" in result:
        verdict |= _report_memory(result["memory"], args, checks)
    print(
        f"\ntargets (efficiency >= {TARGET_EFFICIENCY:g} at k=4, fan-out <= {TARGET_FANOUT_RATIO:g}x, "
        f"RSS growth {args.memory_requests}->{2 * args.memory_requests} requests <= "
        f"{TARGET_MEMORY_GROWTH * 100:g}%): " + "; ".join(checks)
    )
    return verdict


# --------------------------------------------------------------------------- orchestration


def run_bench(args: argparse.Namespace) -> int:
    if args.memory_requests is None:
        args.memory_requests = 2000 if args.quick else 5000
    if args.memory_requests % 5:
        raise SystemExit("--memory-requests must be a multiple of 5")
    tmp = Path(tempfile.mkdtemp(prefix="llmlb-scaling-"))
    cluster = Cluster(tmp, args.tracemalloc_frames if args.tracemalloc else 0)
    result: dict[str, Any] = {}
    try:
        print(f"starting router (temp dir {tmp}) ...", flush=True)
        cluster.start()
        if not args.memory_only:
            result.update(run_async(phase_scaling_and_fanout(cluster, args)))
        if not args.skip_memory:
            result["memory"] = run_async(phase_memory(cluster, args))
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for proc in (cluster.router, *cluster.nodes):
            print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    verdict = print_report(result, args)
    if args.json:
        payload = {
            "benchmark": "scaling",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {
                key: value
                for key, value in vars(args).items()
                if not key.startswith("serve") and key != "json"
            }
            | {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "targets": {
                "efficiency_k4": TARGET_EFFICIENCY,
                "fanout_ratio": TARGET_FANOUT_RATIO,
                "memory_growth": TARGET_MEMORY_GROWTH,
            },
            **result,
            "verdict": verdict,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="short run (about a minute)")
    add("--service-ms", type=float, default=200.0, help="node service time per image (default 200)")
    add("--rounds", type=int, help="requests per node in each scaling run (default 40; 12 quick)")
    add("--deep", type=int, help="concurrency of the deep-queue run at k=4 (default 256; 64 quick)")
    add("--fanout-reps", type=int, help="n=4 requests per fan-out setting (default 12; 5 quick)")
    add("--memory-requests", type=int, help="requests per memory checkpoint (default 5000; 2000 quick)")
    add("--memory-warmup", type=int, default=500, help="requests before the first RSS reading (default 500)")
    add("--memory-nodes", type=int, default=4, help="nodes in the memory phase (default 4)")
    add("--memory-service-ms", type=float, default=1.0, help="service time in the memory phase (default 1)")
    add("--memory-concurrency", type=int, default=16, help="concurrency in the memory phase (default 16)")
    add("--skip-memory", action="store_true", help="no memory phase")
    add("--memory-only", action="store_true", help="only the memory phase")
    add("--tracemalloc", action="store_true", help="run the router under tracemalloc; report what grew")
    add("--tracemalloc-frames", type=int, default=12, help="frames kept per allocation (default 12)")
    add("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--serve-router", nargs=3, metavar=("PORT", "DATA_DIR", "FRAMES"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--serve-node",
        nargs=5,
        metavar=("PORT", "ROUTER", "KEY", "NAME", "SERVICE_S"),
        help=argparse.SUPPRESS,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_router:
        port, data_dir, frames = args.serve_router
        serve_router(int(port), data_dir, int(frames))
        return 0
    if args.serve_node:
        port, router_url, key, name, service_s = args.serve_node
        serve_node(int(port), router_url, key, name, float(service_s))
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
