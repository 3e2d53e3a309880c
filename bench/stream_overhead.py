"""Streaming overhead: time to first chunk of a streamed chat answer, straight and through the router.

Run: ``.venv/bin/python -m bench.stream_overhead`` (``--quick`` for a short run, ``--json PATH``
to keep the numbers). It starts, as separate processes on loopback with real uvicorn:

- an upstream OpenAI-compatible server (a small Litestar app defined here) whose
  ``POST /v1/chat/completions`` with ``stream: true`` answers server-sent events at once:
  ``--chunks`` chat.completion.chunk events ``--gap-ms`` apart, then ``data: [DONE]``;
- a router, with the upstream registered as an OpenAI-compatible endpoint (``/v0/endpoints``,
  with an upstream API key), so requests go through the text plugin and the router's one
  forwarding path (``llmlb_core.router.forwarding``, relayed by ``llmlb_core.upstream.relay``) exactly as in
  production.

Then it streams the same request straight to the upstream and through the router, in
alternating batches (ABBA, so machine noise hits both paths), and reports the time to the first
chunk (TTFC: request sent -> first SSE bytes read), the time to ``data: [DONE]``, what the
router adds to each (p50/p99) and the router's CPU time per stream. Target: the router adds at
most 3 ms to TTFC at p50.

The processes run this module again in internal sub-modes (``--serve-upstream``,
``--serve-router``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

from bench import _common
from bench._common import ServerProcess, cpu_seconds, free_port, percentile, run_async, wait_until

MODEL = "bench-chat"
ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"
# The upstream's own key (the router presents it; the direct path too).
UPSTREAM_KEY = "sk-bench-upstream-key"
TARGET_ADDED_TTFC_P50_MS = 3.0


# --------------------------------------------------------------------------- server sub-modes


def serve_upstream(port: int, chunks: int, gap_ms: float) -> None:
    run = _common.core_module("server.serving", "serving").run

    def event(i: int) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": f"token{i} "}, "finish_reason": None}],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    events = [event(i) for i in range(chunks)]

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        await request.body()

        async def stream() -> AsyncIterator[bytes]:
            for i, chunk in enumerate(events):
                if i and gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                yield chunk
            yield b"data: [DONE]\n\n"

        return Stream(stream(), media_type="text/event-stream")

    _common.server_logging()
    app = Litestar(route_handlers=[health, models, chat], logging_config=None, openapi_config=None)
    run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_router(port: int, data_dir: str) -> None:
    _common.serve_router(port, data_dir, ADMIN_KEY)


# --------------------------------------------------------------------------- measurement


class BenchError(RuntimeError):
    """A stream failed or did not end with data: [DONE]."""


@dataclass
class PathTotals:
    ttfc_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    router_cpu_s: float = 0.0

    def summary(self) -> dict[str, float]:
        ttfc = [x * 1000 for x in self.ttfc_s]
        total = [x * 1000 for x in self.total_s]
        n = max(len(ttfc), 1)
        return {
            "streams": len(ttfc),
            "ttfc_p50_ms": percentile(ttfc, 50),
            "ttfc_p99_ms": percentile(ttfc, 99),
            "ttfc_mean_ms": sum(ttfc) / n,
            "total_p50_ms": percentile(total, 50),
            "total_p99_ms": percentile(total, 99),
            "router_cpu_ms_per_stream": self.router_cpu_s * 1000 / n,
        }


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]


BODY = json.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
).encode()


async def one_stream(client: httpx.AsyncClient, target: Target) -> tuple[float, float]:
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    async with client.stream("POST", target.url, content=BODY, headers=target.headers) as response:
        if response.status_code != 200:
            raise BenchError(
                f"{target.name}: HTTP {response.status_code}: {(await response.aread())[:300]!r}"
            )
        async for chunk in response.aiter_raw():
            if first is None and chunk:
                first = time.perf_counter()
            tail = (tail + chunk)[-64:]
    done = time.perf_counter()
    if first is None or not tail.endswith(b"data: [DONE]\n\n"):
        raise BenchError(f"{target.name}: stream did not end with data: [DONE] ({tail!r})")
    return first - started, done - started


async def batch(
    client: httpx.AsyncClient, target: Target, n: int, router_pid: int, totals: PathTotals | None
) -> None:
    cpu = cpu_seconds(router_pid)
    for _ in range(n):
        ttfc, total = await one_stream(client, target)
        if totals is not None:
            totals.ttfc_s.append(ttfc)
            totals.total_s.append(total)
    if totals is not None:
        totals.router_cpu_s += cpu_seconds(router_pid) - cpu


async def measure(
    router_url: str, upstream_url: str, api_key: str, router_pid: int, streams: int, rounds: int, warmup: int
) -> dict[str, dict[str, float]]:
    direct = Target(
        "direct",
        f"{upstream_url}/v1/chat/completions",
        {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"},
    )
    routed = Target(
        "router",
        f"{router_url}/v1/chat/completions",
        {"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    totals = {"direct": PathTotals(), "router": PathTotals()}
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        for target in (direct, routed):
            await batch(client, target, warmup, router_pid, None)
        per_round = max(1, streams // rounds)
        for i in range(rounds):
            order = (direct, routed) if i % 2 == 0 else (routed, direct)
            for target in order:
                await batch(client, target, per_round, router_pid, totals[target.name])
    return {name: t.summary() for name, t in totals.items()}


# --------------------------------------------------------------------------- report


def print_report(results: dict[str, dict[str, float]], chunks: int, gap_ms: float) -> dict[str, Any]:
    d, r = results["direct"], results["router"]
    derived = {
        "added_ttfc_p50_ms": r["ttfc_p50_ms"] - d["ttfc_p50_ms"],
        "added_ttfc_p99_ms": r["ttfc_p99_ms"] - d["ttfc_p99_ms"],
        "added_total_p50_ms": r["total_p50_ms"] - d["total_p50_ms"],
        "ratio_ttfc_p50": r["ttfc_p50_ms"] / d["ttfc_p50_ms"],
        "ratio_ttfc_p99": r["ttfc_p99_ms"] / d["ttfc_p99_ms"],
        "ratio_total_p50": r["total_p50_ms"] / d["total_p50_ms"],
    }
    print(
        f"\nstreamed chat: {chunks} SSE chunks {gap_ms:g} ms apart, then data: [DONE]; "
        f"{int(d['streams'])} streams per path"
    )
    print(f"  {'':24}{'direct':>10}{'router':>10}{'added':>10}{'ratio':>9}")
    for label, key in (
        ("first chunk p50 ms", "ttfc_p50_ms"),
        ("first chunk p99 ms", "ttfc_p99_ms"),
        ("first chunk mean ms", "ttfc_mean_ms"),
        ("[DONE] p50 ms", "total_p50_ms"),
        ("[DONE] p99 ms", "total_p99_ms"),
    ):
        ratio = r[key] / d[key] if d[key] else math.nan
        print(f"  {label:24}{d[key]:10.2f}{r[key]:10.2f}{r[key] - d[key]:+10.2f}{ratio:8.2f}x")
    print(f"  {'router CPU ms/stream':24}{'-':>10}{r['router_cpu_ms_per_stream']:10.2f}")
    ok = derived["added_ttfc_p50_ms"] <= TARGET_ADDED_TTFC_P50_MS
    print(
        f"\ntarget (router adds <= {TARGET_ADDED_TTFC_P50_MS:g} ms to the first chunk at p50): "
        f"{derived['added_ttfc_p50_ms']:.2f} ms {'PASS' if ok else 'FAIL'}"
    )
    return {"derived": derived, "verdict": {"added_ttfc_p50_ok": ok}}


# --------------------------------------------------------------------------- orchestration


ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}


def run_bench(args: argparse.Namespace) -> int:
    streams = args.streams or (100 if args.quick else 500)
    rounds = args.rounds or (4 if args.quick else 10)
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        up_port, router_port = free_port(), free_port()
        upstream = ServerProcess(
            "upstream",
            "bench.stream_overhead",
            ["--serve-upstream", str(up_port), str(args.chunks), str(args.gap_ms)],
            tmp / "upstream.log",
            f"http://127.0.0.1:{up_port}",
        )
        router = ServerProcess(
            "router",
            "bench.stream_overhead",
            ["--serve-router", str(router_port), str(tmp / "router-data")],
            tmp / "router.log",
            f"http://127.0.0.1:{router_port}",
        )
        try:
            print(f"starting upstream (:{up_port}) and router (:{router_port}) ...", flush=True)
            upstream.start()
            router.start()
            upstream.wait_healthy()
            router.wait_healthy()
            created = httpx.post(
                f"{router.url}/v0/endpoints",
                json={
                    "name": "bench",
                    "url": upstream.url,
                    "api_key": UPSTREAM_KEY,
                    "kind": "generic",
                    "slots": 64,
                },
                headers=ADMIN_HEADERS,
                timeout=10,
            )
            created.raise_for_status()
            wait_until(
                lambda: (
                    httpx.get(f"{router.url}/v0/endpoints/bench", headers=ADMIN_HEADERS).json()["status"]
                    == "online"
                ),
                20,
                "endpoint online",
            )
            key = httpx.post(
                f"{router.url}/v0/keys", json={"name": "bench", "scopes": ["api"]}, headers=ADMIN_HEADERS
            )
            key.raise_for_status()
            print(
                f"  {streams} streams per path in {rounds} alternating rounds (+{args.warmup} warm-up) ...",
                flush=True,
            )
            results = run_async(
                measure(router.url, upstream.url, key.json()["key"], router.pid, streams, rounds, args.warmup)
            )
            router.check_alive()
            upstream.check_alive()
        except Exception as exc:
            print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            for proc in (router, upstream):
                print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
            return 1
        finally:
            router.stop()
            upstream.stop()

    report = print_report(results, args.chunks, args.gap_ms)
    if args.json:
        payload = {
            "benchmark": "stream_overhead",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {
                "streams": streams,
                "rounds": rounds,
                "warmup": args.warmup,
                "chunks": args.chunks,
                "gap_ms": args.gap_ms,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "targets": {"added_ttfc_p50_ms": TARGET_ADDED_TTFC_P50_MS},
            "results": results,
            **report,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_overhead", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="short run (100 streams per path)")
    parser.add_argument("--streams", type=int, metavar="N", help="streams per path (default 500)")
    parser.add_argument("--rounds", type=int, help="alternating direct/router batches (default 10)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up streams per path (default 20)")
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per stream (default 16)")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="time between chunks (default 2 ms)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--serve-upstream", nargs=3, metavar=("PORT", "CHUNKS", "GAP_MS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-router", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_upstream:
        port, chunks, gap_ms = args.serve_upstream
        serve_upstream(int(port), int(chunks), float(gap_ms))
        return 0
    if args.serve_router:
        serve_router(int(args.serve_router[0]), args.serve_router[1])
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
