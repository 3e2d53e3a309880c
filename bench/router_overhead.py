"""Router overhead: the same requests sent straight to a node and through the router.

Run: ``.venv/bin/python -m bench.router_overhead`` (``--quick`` for a short run, ``--json PATH``
to keep the numbers). It starts, as separate processes on loopback with real uvicorn:

- a router with a bench capability plugin (``POST /v1/bench`` forwarded the way the images
  plugin forwards a single-part ``b64_json`` answer: ``context.forward.call`` with model
  resolution, balancing, API-key guard, node credential, failover, the answer read up to the
  images size bound and checked by ``llmlb_plugins.images.answers.read_answer`` - schema, base64,
  PNG signature - then passed on as the node's bytes);
- a node with a bench runtime plugin that answers ``POST /v1/bench`` at once with a fixed
  ~1.5 MB body shaped like an OpenAI images response (one 1024x1024 PNG in base64).

Then it sends the same requests to the node directly (with the node's credential) and through
the router (with an API key), at concurrency 1 and 16, in alternating batches so machine noise
hits both paths, and reports latency, the latency the router adds, throughput and the router's
CPU time per request (from /proc, over the router-path batches).

The processes run this module again in internal sub-modes (``--serve-router``, ``--serve-node``)
because the plugins are defined here, not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from bench import _common
from bench._common import (
    PySpy,
    ServerProcess,
    cpu_seconds,
    create_key,
    free_port,
    online_node_names,
    percentile,
    run_async,
    wait_until,
)
from llmlb_core.api import Capability, CapabilityContext, NoSettings, decode_json_bytes, hookimpl
from llmlb_node.api import ModelAdvert, Runtime, RuntimeContext, RuntimeLoad, RuntimeType
from llmlb_node.api import hookimpl as node_hookimpl
from llmlb_plugins.images.answers import answer_limit, read_answer

MODEL = "bench-image-1"
CAPABILITY = "bench"
RUNTIME = "bench"
FLAGS = frozenset({"bench"})
NODE_NAME = "bench-node"
# The router runs on loopback with a throw-away data dir; its admin key need not be secret.
ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"
# More slots than the highest concurrency: the router must never queue in this benchmark.
NODE_SLOTS = 256
REQUEST_BODY = msgspec.json.encode({"model": MODEL})
# A small chat answer the bench node also serves (``POST /v1/chat/completions``, forwarded by the
# router's text capability): what bench.replicas measures besides the 1.5 MB image answer.
CHAT_MODEL = "bench-chat-1"
CHAT_REQUEST_BODY = msgspec.json.encode(
    {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
)
CHAT_ANSWER = msgspec.json.encode(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": CHAT_MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
)

TARGET_ADDED_P50_MS = 3.0
TARGET_ROUTER_CPU_MS = 2.0


# --------------------------------------------------------------------------- plugins


class BenchRequest(msgspec.Struct, kw_only=True):
    model: str


def build_image_response(noise_rows: int = 366, seed: int = 1234) -> bytes:
    """An OpenAI images response with one 1024x1024 PNG in base64 (about 1.5 MB of JSON).

    The top ``noise_rows`` rows are random (incompressible), the rest flat: the PNG size, and so
    the body size, is set by ``noise_rows`` and the same on every run.
    """
    from PIL import Image

    width = height = 1024
    rng = random.Random(seed)
    pixels = rng.randbytes(noise_rows * width * 3) + bytes((height - noise_rows) * width * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode("ascii")
    return msgspec.json.encode({"created": int(time.time()), "data": [{"b64_json": b64}]})


def build_bench_routes(context: CapabilityContext[NoSettings]) -> Sequence[BaseRouteHandler]:
    """``POST /v1/bench``, forwarded the way the images capability forwards a single-part
    ``b64_json`` job: one buffered ``forward.call``, the answer read up to the images size bound,
    checked by ``read_answer`` and passed on as the node's bytes."""
    forward = context.forward

    @post("/v1/bench", status_code=200)
    async def bench(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        req = decode_json_bytes(body, BenchRequest)
        result = await forward.call(
            req.model,
            FLAGS,
            "/v1/bench",
            content=body,
            content_type="application/json",
            max_answer_bytes=answer_limit("1024x1024", 1),
            check=functools.partial(read_answer, count=1),
        )
        return Response(content=result.content, media_type="application/json", headers=result.headers)

    return [bench]


class BenchCapability:
    """Router side: capability ``bench`` with ``POST /v1/bench`` forwarded to a node as is."""

    @hookimpl
    def llmlb_register_capabilities(self, register: Callable[[Capability[Any]], None]) -> None:
        register(
            Capability(
                name=CAPABILITY,
                model_flags=FLAGS,
                build_routes=build_bench_routes,
                description="router overhead benchmark",
                schemas={"BenchRequest": BenchRequest},
            )
        )


class BenchRuntime(Runtime):
    """Answers ``POST /v1/bench`` at once with a body built once at start-up."""

    type_name = RUNTIME
    slots = NODE_SLOTS

    def __init__(self, context: RuntimeContext[NoSettings]) -> None:
        self.body = build_image_response()
        self.active = 0

    def models(self) -> list[ModelAdvert]:
        return [
            ModelAdvert(id=MODEL, capabilities=[CAPABILITY], runtime=RUNTIME),
            ModelAdvert(id=CHAT_MODEL, capabilities=["chat_completion"], runtime=RUNTIME),
        ]

    def load(self) -> RuntimeLoad:
        return RuntimeLoad(active_jobs=self.active)

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        @post("/v1/bench", status_code=200)
        async def bench(request: Request[Any, Any, Any]) -> Response[bytes]:
            decode_json_bytes(await request.body(), BenchRequest)
            return Response(content=runtime.body, media_type="application/json")

        @post("/v1/chat/completions", status_code=200)
        async def chat(request: Request[Any, Any, Any]) -> Response[bytes]:
            await request.body()
            return Response(content=CHAT_ANSWER, media_type="application/json")

        return [bench, chat]


class BenchRuntimePlugin:
    """Node side: registers runtime type ``bench``."""

    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(RuntimeType(name=RUNTIME, factory=BenchRuntime, description="benchmark runtime"))


# --------------------------------------------------------------------------- server sub-modes


def serve_router(port: int, data_dir: str, **settings: Any) -> None:
    """The router with the bench capability; ``settings`` as in ``_common.serve_router``
    (e.g. ``database_url``, ``redis_url``)."""
    _common.serve_router(port, data_dir, ADMIN_KEY, extra_plugins=[BenchCapability()], **settings)


def serve_node(port: int, router_url: str, api_key: str, token_file: str) -> None:
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
        name=NODE_NAME,
        runtimes=[RUNTIME],
        models_dir="/nonexistent",
    )
    app = create_node_app(settings, extra_plugins=[BenchRuntimePlugin()])
    # The credential the router presents to this node; the benchmark client uses it too.
    tmp = Path(f"{token_file}.tmp")
    tmp.write_text(app.state.node_token)
    tmp.chmod(0o600)
    tmp.replace(token_file)
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        drain=app.state.node_drain,
        graceful_timeout_s=5,
    )


# --------------------------------------------------------------------------- measurement


class BenchError(RuntimeError):
    """A request failed or answered something other than the node's body."""


@dataclass
class PathTotals:
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    router_cpu_s: float = 0.0
    node_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    # Deltas of the target's extra meters (Target.meters), summed over the batches.
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> dict[str, float]:
        ms = [x * 1000 for x in self.latencies_s]
        n = max(self.requests, 1)
        return {
            "requests": self.requests,
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / n,
            "max_ms": max(ms, default=math.nan),
            "throughput_rps": self.requests / self.wall_s if self.wall_s else math.nan,
            "wall_s": self.wall_s,
            "router_cpu_ms_per_req": self.router_cpu_s * 1000 / n,
            "node_cpu_ms_per_req": self.node_cpu_s * 1000 / n,
            "client_cpu_ms_per_req": self.client_cpu_s * 1000 / n,
            **{f"{name}_per_req": value / n for name, value in self.extra.items()},
        }


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    body: bytes = REQUEST_BODY
    # More URLs of the same path: requests go to ``url`` and these in turn (several routers).
    more_urls: tuple[str, ...] = ()
    # The processes whose CPU time is this path's router CPU (None: the Bench's router).
    router_pids: tuple[int, ...] | None = None
    # The node process behind this path (None: the Bench's node).
    node_pid: int | None = None
    # Extra cumulative counters read before and after each batch (name -> reader); their
    # deltas per request are in the summary as ``<name>_per_req``.
    meters: dict[str, Callable[[], float]] = field(default_factory=dict)

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.more_urls)


@dataclass
class Bench:
    client: httpx.AsyncClient
    router_pid: int
    node_pid: int
    expected: bytes

    async def batch(self, target: Target, n: int, concurrency: int, totals: PathTotals | None) -> None:
        """``n`` requests with ``concurrency`` in flight; added to ``totals`` (None: warm-up)."""
        latencies: list[float] = []
        remaining = n
        urls = target.urls
        router_pids = target.router_pids or (self.router_pid,)
        node_pid = target.node_pid or self.node_pid

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                url = urls[remaining % len(urls)]
                started = time.perf_counter()
                response = await self.client.post(url, content=target.body, headers=target.headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or len(response.content) != len(self.expected):
                    raise BenchError(
                        f"{target.name}: HTTP {response.status_code}, "
                        f"{len(response.content)} bytes: {response.content[:300]!r}"
                    )

        meters = {name: read() for name, read in target.meters.items()}
        router_cpu, node_cpu = sum(map(cpu_seconds, router_pids)), cpu_seconds(node_pid)
        client_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
        wall = time.perf_counter() - started
        if totals is None:
            return
        totals.latencies_s.extend(latencies)
        totals.wall_s += wall
        totals.router_cpu_s += sum(map(cpu_seconds, router_pids)) - router_cpu
        totals.node_cpu_s += cpu_seconds(node_pid) - node_cpu
        totals.client_cpu_s += time.process_time() - client_cpu
        for name, read in target.meters.items():
            totals.extra[name] = totals.extra.get(name, 0.0) + read() - meters[name]

    async def check(self, target: Target) -> None:
        for url in target.urls:
            response = await self.client.post(url, content=target.body, headers=target.headers)
            if response.status_code != 200 or response.content != self.expected:
                raise BenchError(
                    f"{target.name} ({url}): unexpected answer HTTP {response.status_code}: "
                    f"{response.content[:300]!r}"
                )


def split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal positive sizes (fewer parts when n is small)."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


async def compare(
    bench: Bench, targets: Sequence[Target], concurrency: int, requests: int, rounds: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Warm each path up, then ``requests`` per path in ``rounds`` batches, the paths' order
    reversed every other round (ABBA: machine drift hits every path alike); each path's summary."""
    for target in targets:
        await bench.batch(target, max(warmup, 2 * concurrency), concurrency, None)
    totals = {target.name: PathTotals() for target in targets}
    for i, size in enumerate(split(requests, rounds)):
        for target in targets if i % 2 == 0 else targets[::-1]:
            await bench.batch(target, size, concurrency, totals[target.name])
    return {name: t.summary() for name, t in totals.items()}


async def measure(
    router_url: str,
    node_url: str,
    api_key: str,
    node_token: str,
    router_pid: int,
    node_pid: int,
    plan: Sequence[tuple[int, int]],
    rounds: int,
    warmup: int,
) -> tuple[int, dict[int, dict[str, dict[str, float]]]]:
    direct = Target(
        "direct",
        f"{node_url}/v1/bench",
        {"authorization": f"Bearer {node_token}", "content-type": "application/json"},
    )
    routed = Target(
        "router",
        f"{router_url}/v1/bench",
        {"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    top = max(c for c, _ in plan)
    limits = httpx.Limits(max_connections=2 * top + 4, max_keepalive_connections=2 * top + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        first = await client.post(direct.url, content=REQUEST_BODY, headers=direct.headers)
        if first.status_code != 200:
            raise BenchError(f"direct: HTTP {first.status_code}: {first.content[:300]!r}")
        bench = Bench(client, router_pid, node_pid, first.content)
        await bench.check(routed)  # the router forwards the node's bytes unchanged
        results: dict[int, dict[str, dict[str, float]]] = {}
        for concurrency, requests in plan:
            print(
                f"  concurrency {concurrency}: warm-up, then {requests} requests per path "
                f"in {min(rounds, requests)} alternating rounds ...",
                flush=True,
            )
            results[concurrency] = await compare(
                bench, (direct, routed), concurrency, requests, rounds, warmup
            )
        return len(bench.expected), results


# --------------------------------------------------------------------------- report


def derive(paths: dict[str, dict[str, float]]) -> dict[str, float]:
    d, r = paths["direct"], paths["router"]
    # Router CPU while only direct traffic ran (heartbeats, sweeps): its background rate.
    idle_rate = d["router_cpu_ms_per_req"] * d["requests"] / d["wall_s"] if d["wall_s"] else 0.0
    return {
        "added_p50_ms": r["p50_ms"] - d["p50_ms"],
        "added_p99_ms": r["p99_ms"] - d["p99_ms"],
        "added_mean_ms": r["mean_ms"] - d["mean_ms"],
        "ratio_p50": r["p50_ms"] / d["p50_ms"],
        "ratio_p99": r["p99_ms"] / d["p99_ms"],
        "throughput_ratio": r["throughput_rps"] / d["throughput_rps"],
        "router_cpu_ms_per_req": r["router_cpu_ms_per_req"],
        "router_idle_cpu_ms_per_s": idle_rate,
    }


def print_report(body_bytes: int, results: dict[int, dict[str, dict[str, float]]]) -> dict[str, Any]:
    derived = {c: derive(paths) for c, paths in results.items()}
    print(f"\nresponse body: {body_bytes:,} bytes (1024x1024 PNG, base64 in JSON)")
    for c, paths in results.items():
        d, r, x = paths["direct"], paths["router"], derived[c]
        print(f"\nconcurrency {c}  ({int(d['requests'])} requests per path)")
        print(f"  {'':22}{'direct':>10}{'router':>10}{'added':>10}{'ratio':>9}")
        for label, key, added, ratio in (
            ("latency p50 ms", "p50_ms", x["added_p50_ms"], x["ratio_p50"]),
            ("latency p99 ms", "p99_ms", x["added_p99_ms"], x["ratio_p99"]),
            ("latency mean ms", "mean_ms", x["added_mean_ms"], r["mean_ms"] / d["mean_ms"]),
        ):
            print(f"  {label:22}{d[key]:10.2f}{r[key]:10.2f}{added:+10.2f}{ratio:8.2f}x")
        print(
            f"  {'throughput req/s':22}{d['throughput_rps']:10.1f}{r['throughput_rps']:10.1f}"
            f"{'':10}{x['throughput_ratio']:8.2f}x"
        )
        print(
            f"  {'router CPU ms/req':22}{'-':>10}{r['router_cpu_ms_per_req']:10.2f}"
            f"   (router background CPU: {x['router_idle_cpu_ms_per_s']:.1f} ms/s)"
        )
        print(f"  {'node CPU ms/req':22}{d['node_cpu_ms_per_req']:10.2f}{r['node_cpu_ms_per_req']:10.2f}")
        print(
            f"  {'client CPU ms/req':22}{d['client_cpu_ms_per_req']:10.2f}{r['client_cpu_ms_per_req']:10.2f}"
        )

    checks: list[str] = []
    verdict: dict[str, Any] = {}
    for c, x in derived.items():
        lat_ok = x["added_p50_ms"] <= TARGET_ADDED_P50_MS
        cpu_ok = x["router_cpu_ms_per_req"] <= TARGET_ROUTER_CPU_MS
        verdict[str(c)] = {"added_p50_ok": lat_ok, "router_cpu_ok": cpu_ok}
        checks.append(
            f"c={c}: added p50 {x['added_p50_ms']:.2f} ms {'PASS' if lat_ok else 'FAIL'}, "
            f"router CPU {x['router_cpu_ms_per_req']:.2f} ms/req {'PASS' if cpu_ok else 'FAIL'}"
        )
    print(
        f"\ntargets (added p50 <= {TARGET_ADDED_P50_MS:g} ms, router CPU <= "
        f"{TARGET_ROUTER_CPU_MS:g} ms/request): " + "; ".join(checks)
    )
    return {"derived": {str(c): x for c, x in derived.items()}, "verdict": verdict}


# --------------------------------------------------------------------------- orchestration


def run_bench(args: argparse.Namespace) -> int:
    c1, c16 = (60, 240) if args.quick else (400, 1600)
    if args.requests:
        c1, c16 = args.requests, 4 * args.requests
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    plan = [(c, c1 if c == 1 else c16) for c in concurrencies]
    rounds = args.rounds or (4 if args.quick else 10)

    with tempfile.TemporaryDirectory(prefix="llmlb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        router_port, node_port = free_port(), free_port()
        router = ServerProcess(
            "router",
            "bench.router_overhead",
            ["--serve-router", str(router_port), str(tmp / "router-data")],
            tmp / "router.log",
            f"http://127.0.0.1:{router_port}",
        )
        node: ServerProcess | None = None
        profiler: PySpy | None = None
        try:
            print(f"starting router (:{router_port}) and node (:{node_port}) ...", flush=True)
            router.start().wait_healthy()
            node_key = create_key(router.url, ADMIN_KEY, "bench-node", ["node"])
            api_key = create_key(router.url, ADMIN_KEY, "bench-client", ["api"])
            token_file = tmp / "node-token"
            node = ServerProcess(
                "node",
                "bench.router_overhead",
                ["--serve-node", str(node_port), router.url, node_key, str(token_file)],
                tmp / "node.log",
                f"http://127.0.0.1:{node_port}",
            )
            node.start().wait_healthy()
            wait_until(
                lambda: NODE_NAME in online_node_names(router.url, ADMIN_KEY), 20, "node online at the router"
            )
            if args.py_spy:
                executable = shutil.which(args.py_spy_bin) or args.py_spy_bin
                profiler = PySpy(executable, router.pid, Path(args.py_spy), native=args.py_spy_native)
                profiler.start()
            body_bytes, results = run_async(
                measure(
                    router.url,
                    node.url,
                    api_key,
                    token_file.read_text().strip(),
                    router.pid,
                    node.pid,
                    plan,
                    rounds,
                    args.warmup,
                )
            )
            node.check_alive()
            router.check_alive()
            if profiler is not None:
                profiler.stop()
                print(f"router profile written to {args.py_spy}")
        except Exception as exc:
            print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            for proc in (router, node):
                if proc is not None:
                    print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
            return 1
        finally:
            if profiler is not None:
                profiler.stop()
            if node is not None:
                node.stop()
            router.stop()

    report = print_report(body_bytes, results)
    if args.json:
        payload = {
            "benchmark": "router_overhead",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {
                "plan": plan,
                "rounds": rounds,
                "warmup": args.warmup,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "body_bytes": body_bytes,
            "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "router_cpu_ms_per_req": TARGET_ROUTER_CPU_MS},
            "results": {str(c): paths for c, paths in results.items()},
            **report,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.router_overhead", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="short run (60 / 240 requests per path)")
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests per path at concurrency 1 (4N at higher concurrency); default 400, or 60 with --quick",
    )
    parser.add_argument("--concurrency", default="1,16", help="comma-separated list (default 1,16)")
    parser.add_argument("--rounds", type=int, help="alternating direct/router batches (default 10)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per path (default 20)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="profile the router with py-spy during the run: PATH.svg flame graph, "
        "PATH.txt collapsed stacks, PATH.json speedscope",
    )
    parser.add_argument("--py-spy-bin", default="py-spy", metavar="EXE", help="py-spy executable")
    parser.add_argument("--py-spy-native", action="store_true", help="include native (C) frames")
    parser.add_argument("--serve-router", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-node", nargs=4, metavar=("PORT", "ROUTER_URL", "KEY", "TOKEN_FILE"), help=argparse.SUPPRESS
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_router:
        serve_router(int(args.serve_router[0]), args.serve_router[1])
        return 0
    if args.serve_node:
        port, router_url, key, token_file = args.serve_node
        serve_node(int(port), router_url, key, token_file)
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
