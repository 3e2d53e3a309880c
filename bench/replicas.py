"""Router replicas: what shared state (PostgreSQL + Redis) costs per request, beside one router.

Run: ``.venv/bin/python -m bench.replicas`` (``--quick`` for a short run, ``--json PATH`` to
keep the numbers). In one run, side by side, it starts on loopback (real uvicorn, separate
processes):

- ``sqlite``: one router with its default SQLite store (today's single-router setup);
- ``shared``: two routers on one private PostgreSQL and one private Redis
  (``database_url`` + ``redis_url``: every request claims a node slot in Redis with one Lua
  script, ``llmlb_core.shared.slots.SLOTS``, which also carries the router's earlier releases;
  a release no claim takes along goes on its own 20 ms later);
- ``shared-1``: one of those two routers alone (its peer up and idle): the state's own cost;
- ``sqlite-2``: two SQLite routers, each with its own stub node, nothing shared, fed like
  ``shared``: what alternating between two router processes costs by itself here;
- the stub node of ``bench.router_overhead`` twice, one registered with each setup: it answers
  a small chat completion (``POST /v1/chat/completions``, through the router's text capability)
  and a 1.5 MB image answer (``POST /v1/bench``, forwarded the way the images capability does).

The two routers of ``shared`` are fed **directly and alternately** (request i to router i mod 2,
no nginx in front): nothing but the routers themselves is counted as router CPU. Their CPU time
is summed, per request. For each scenario - chat at concurrency 1 and 16, the image at
concurrency 1 - the same requests go straight to the node (``direct``) and through every
setup, in alternating batches (ABBA, ``bench.router_overhead.compare``), so machine noise
hits every path alike. It prints latency p50/p99, the latency each setup adds over
``direct``, router CPU per request, and ``shared`` vs ``sqlite`` (difference in ms and ratio);
then, measured over the ``shared`` batches, the Redis commands per request (``INFO
commandstats`` before and after each batch; the bench's own ``INFO`` calls left out), Redis's
CPU per request (``INFO cpu``) and PostgreSQL's (its postmaster and backends, from /proc). Target
(issue 19): shared state adds at most 0.15 ms router CPU per chat request, checked as
``shared-1`` - ``sqlite`` and ``shared`` - ``sqlite-2``.

PostgreSQL and Redis are started the way the tests start them, by importing
``tests.support.postgres`` and ``tests.support.redis`` (so this benchmark needs the ``test``
extra, pytest included, and the server binaries: Debian's ``postgresql`` and ``redis-server``;
as root, PostgreSQL runs as the ``postgres`` user through ``runuser``).

The routers run this module again in an internal sub-mode (``--serve-router``); the nodes run
``bench.router_overhead --serve-node``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench import router_overhead as ro
from bench._common import (
    ServerProcess,
    create_key,
    free_port,
    online_node_names,
    run_async,
    tree_cpu_seconds,
    wait_until,
)

# Every router gets it: node credentials shared through Redis are sealed with it.
SECRET_KEY = "bench-replicas-secret-key-0123456789"
TARGET_SHARED_CPU_MS = 0.15
PATHS = ("direct", "sqlite", "shared")


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str  # on the node and the routers
    body: bytes
    concurrency: int
    requests: int


# --------------------------------------------------------------------------- Redis and PostgreSQL meters


# Redis commands counted one by one (INFO commandstats names); the rest as "other".
REDIS_COMMANDS = ("evalsha", "eval", "publish", "hset", "set", "client|setinfo", "ping", "hello")


def redis_meters(port: int) -> dict[str, Callable[[], float]]:
    """Cumulative Redis counters (name -> reader): commands (all, and by name) and CPU in ms.
    The readers' own ``INFO`` calls are left out."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)

    def calls(name: str | None) -> Callable[[], float]:
        def read() -> float:
            stats: dict[str, Any] = client.info("commandstats")
            counts = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"}
            if name is None:
                return float(sum(counts.values()))
            if name == "other":
                return float(sum(v for k, v in counts.items() if k not in REDIS_COMMANDS))
            return float(counts.get(name, 0))

        return read

    def cpu_ms() -> float:
        info: dict[str, Any] = client.info("cpu")
        return 1000 * float(info["used_cpu_user"] + info["used_cpu_sys"])

    return {
        "redis_commands": calls(None),
        **{f"redis_{name}": calls(name) for name in (*REDIS_COMMANDS, "other")},
        "redis_cpu_ms": cpu_ms,
        "redis_connections": lambda: float(client.info("stats")["total_connections_received"]),
    }


class RedisMonitor:
    """``MONITOR`` on a thread: every command Redis runs, split into those clients send (each a
    round trip) and those scripts run inside Redis (``[0 lua]``: no round trip); ``INFO`` (this
    benchmark's meters) left out.

    ``INFO commandstats`` cannot tell them apart (it counts a script's inner HSET like a
    client's), and MONITOR costs Redis CPU, so it runs in a phase of its own, after the timed
    batches."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.sent: Counter[str] = Counter()
        self.in_scripts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("redis MONITOR did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.client.ping()  # wakes the monitor's read (not counted: the flag is set)
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            while True:
                command = monitor.next_command()
                if self._stop.is_set():
                    return
                name = command["command"].split(" ", 1)[0].upper()
                if name == "INFO":
                    continue  # this benchmark's meters
                (self.in_scripts if command["client_type"] == "lua" else self.sent)[name] += 1


def postgres_meter(data_dir: Path) -> Callable[[], float]:
    """PostgreSQL's CPU in ms: the postmaster (first line of postmaster.pid) and its children."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    return lambda: 1000 * tree_cpu_seconds(pid)


# --------------------------------------------------------------------------- measurement


async def answer(client: httpx.AsyncClient, target: ro.Target) -> bytes:
    response = await client.post(target.url, content=target.body, headers=target.headers)
    if response.status_code != 200:
        raise ro.BenchError(f"{target.name}: HTTP {response.status_code}: {response.content[:300]!r}")
    return response.content


async def measure(
    scenarios: Sequence[Scenario],
    direct: ro.Target,
    sqlite: ro.Target,
    shared: ro.Target,
    shared_node: ro.Target,
    shared_one: ro.Target,
    sqlite_two: ro.Target,
    rounds: int,
    warmup: int,
    redis_port: int,
    monitor_requests: int,
) -> dict[str, dict[str, dict[str, float]]]:
    top = max(s.concurrency for s in scenarios)
    limits = httpx.Limits(max_connections=4 * top + 8, max_keepalive_connections=4 * top + 8)
    results: dict[str, dict[str, dict[str, float]]] = {}
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        for s in scenarios:
            targets = [
                replace(t, body=s.body, url=t.url + s.path, more_urls=tuple(u + s.path for u in t.more_urls))
                for t in (direct, sqlite, shared, shared_node, shared_one, sqlite_two)
            ]
            answers = [await answer(client, t) for t in (targets[0], targets[3])]
            assert sqlite.router_pids is not None and direct.node_pid is not None
            bench = ro.Bench(client, sqlite.router_pids[0], direct.node_pid, answers[0])
            # Every router passes its node's bytes on unchanged (the two nodes' image answers
            # differ in their "created" second, not in size).
            await bench.check(targets[1])
            await replace(bench, expected=answers[1]).check(targets[2])
            # sqlite-2's second router has its own node, whose answers differ in their "created"
            # second: its batches check each answer's size, as every path's do.
            targets = [*targets[:3], targets[4], targets[5]]
            print(
                f"  {s.name}: warm-up, then {s.requests} requests per path "
                f"in {min(rounds, s.requests)} alternating rounds ...",
                flush=True,
            )
            results[s.name] = await ro.compare(bench, targets, s.concurrency, s.requests, rounds, warmup)
            results[s.name]["direct"]["body_bytes"] = len(answers[0])
            # Round trips, apart: MONITOR during untimed requests through the shared routers.
            n = min(s.requests, monitor_requests)
            with RedisMonitor(redis_port) as monitor:
                await bench.batch(targets[2], n, s.concurrency, None)
                await asyncio.sleep(0.2)  # the last releases go out 20 ms after the answers
            results[s.name]["shared"]["monitored_requests"] = n
            for kind, counts in (("sent", monitor.sent), ("in_scripts", monitor.in_scripts)):
                for name, count in counts.items():
                    results[s.name]["shared"][f"redis_{kind}_{name}_per_req"] = count / n
                results[s.name]["shared"][f"redis_{kind}_per_req"] = sum(counts.values()) / n
    return results


# --------------------------------------------------------------------------- report


def derive(paths: dict[str, dict[str, float]]) -> dict[str, float]:
    d, one, two = paths["direct"], paths["sqlite"], paths["shared"]
    solo, pair = paths["shared-1"], paths["sqlite-2"]
    out: dict[str, float] = {
        "shared1_router_cpu_ms_per_req": solo["router_cpu_ms_per_req"],
        "shared1_minus_sqlite_router_cpu_ms": solo["router_cpu_ms_per_req"] - one["router_cpu_ms_per_req"],
        "sqlite2_router_cpu_ms_per_req": pair["router_cpu_ms_per_req"],
        "shared_minus_sqlite2_router_cpu_ms": two["router_cpu_ms_per_req"] - pair["router_cpu_ms_per_req"],
    }
    for q in ("p50", "p99"):
        out[f"sqlite_added_{q}_ms"] = one[f"{q}_ms"] - d[f"{q}_ms"]
        out[f"shared_added_{q}_ms"] = two[f"{q}_ms"] - d[f"{q}_ms"]
        out[f"shared_minus_sqlite_added_{q}_ms"] = two[f"{q}_ms"] - one[f"{q}_ms"]
        out[f"shared_over_sqlite_{q}"] = two[f"{q}_ms"] / one[f"{q}_ms"]
    out["sqlite_router_cpu_ms_per_req"] = one["router_cpu_ms_per_req"]
    out["shared_router_cpu_ms_per_req"] = two["router_cpu_ms_per_req"]
    out["shared_minus_sqlite_router_cpu_ms"] = two["router_cpu_ms_per_req"] - one["router_cpu_ms_per_req"]
    out["shared_over_sqlite_router_cpu"] = two["router_cpu_ms_per_req"] / one["router_cpu_ms_per_req"]
    out.update({k: v for k, v in two.items() if k.startswith(("redis_", "postgres_"))})
    return out


def print_report(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    derived = {name: derive(paths) for name, paths in results.items()}
    print(
        "\nsqlite: one router, SQLite; shared: two routers on one PostgreSQL + one Redis, "
        "fed alternately (no proxy); shared-1: one of those two alone (its peer up, idle); "
        "sqlite-2: two SQLite routers fed alternately, nothing shared; ms"
    )
    head = f"  {'':22}{'direct':>9}{'sqlite':>9}{'shared':>9}{'shared-sqlite':>15}{'shared/sqlite':>15}"
    for name, paths in results.items():
        d, one, two, x = paths["direct"], paths["sqlite"], paths["shared"], derived[name]
        print(f"\n{name}  ({int(d['requests'])} requests per path, answer {int(d['body_bytes']):,} bytes)")
        print(head)
        for q in ("p50", "p99"):
            key = f"{q}_ms"
            print(
                f"  {'latency ' + q:22}{d[key]:9.2f}{one[key]:9.2f}{two[key]:9.2f}"
                f"{two[key] - one[key]:+15.2f}{x[f'shared_over_sqlite_{q}']:14.2f}x"
            )
        for q in ("p50", "p99"):
            print(
                f"  {'added ' + q:22}{'':9}{x[f'sqlite_added_{q}_ms']:+9.2f}{x[f'shared_added_{q}_ms']:+9.2f}"
                f"{x[f'shared_minus_sqlite_added_{q}_ms']:+15.2f}"
            )
        print(
            f"  {'router CPU /req':22}{'':9}{one['router_cpu_ms_per_req']:9.3f}"
            f"{two['router_cpu_ms_per_req']:9.3f}{x['shared_minus_sqlite_router_cpu_ms']:+15.3f}"
            f"{x['shared_over_sqlite_router_cpu']:14.2f}x"
        )
        print(
            f"  {'router CPU /req, shared-1':22}{'':18}{x['shared1_router_cpu_ms_per_req']:9.3f}"
            f"{x['shared1_minus_sqlite_router_cpu_ms']:+15.3f}   (one shared router alone - sqlite)"
        )
        print(
            f"  {'router CPU /req, sqlite-2':22}{'':9}{x['sqlite2_router_cpu_ms_per_req']:9.3f}{'':9}"
            f"{x['shared_minus_sqlite2_router_cpu_ms']:+15.3f}   (shared - two SQLite routers in turn)"
        )
        print(
            f"  {'throughput req/s':22}{d['throughput_rps']:9.1f}{one['throughput_rps']:9.1f}"
            f"{two['throughput_rps']:9.1f}"
        )
        by_name = ", ".join(
            f"{name.upper()} {x[f'redis_{name}_per_req']:.2f}"
            for name in (*REDIS_COMMANDS, "other")
            if x[f"redis_{name}_per_req"] > 0
        )
        print(
            f"  shared, per request: Redis CPU {x['redis_cpu_ms_per_req']:.3f} ms, "
            f"PostgreSQL CPU {x['postgres_cpu_ms_per_req']:.3f} ms, Redis connections opened "
            f"{x['redis_connections_per_req']:.2f}"
        )
        print(f"    Redis commands run (INFO commandstats): {x['redis_commands_per_req']:.2f} ({by_name})")
        for kind, label in (("sent", "round trips (sent by clients)"), ("in_scripts", "run inside scripts")):
            names = sorted(
                (k.removeprefix(f"redis_{kind}_").removesuffix("_per_req"), v)
                for k, v in x.items()
                if k.startswith(f"redis_{kind}_") and k != f"redis_{kind}_per_req"
            )
            detail = ", ".join(f"{name} {v:.2f}" for name, v in names)
            print(
                f"    {label} (MONITOR, {int(two['monitored_requests'])} requests): "
                f"{x[f'redis_{kind}_per_req']:.2f} ({detail})"
            )

    checks: list[str] = []
    verdict: dict[str, bool] = {}
    for name, x in derived.items():
        if not name.startswith("chat"):
            continue
        alone, in_turn = x["shared1_minus_sqlite_router_cpu_ms"], x["shared_minus_sqlite2_router_cpu_ms"]
        ok = max(alone, in_turn) <= TARGET_SHARED_CPU_MS
        verdict[name] = ok
        checks.append(
            f"{name}: one router {alone:+.3f} ms, two in turn {in_turn:+.3f} ms {'PASS' if ok else 'FAIL'}"
        )
    print(
        f"\ntarget (shared state adds <= {TARGET_SHARED_CPU_MS:g} ms router CPU per chat request; "
        "shared-1 - sqlite and shared - sqlite-2): " + "; ".join(checks)
    )
    return {"derived": derived, "verdict": verdict}


# --------------------------------------------------------------------------- orchestration


def plan(args: argparse.Namespace) -> list[Scenario]:
    c1, c16, image = (60, 240, 40) if args.quick else (400, 1600, 200)
    if args.requests:
        c1, c16, image = args.requests, 4 * args.requests, args.requests
    chat = ro.CHAT_REQUEST_BODY
    return [
        Scenario("chat c=1", "/v1/chat/completions", chat, 1, c1),
        Scenario("chat c=16", "/v1/chat/completions", chat, 16, c16),
        Scenario("image 1.5 MB c=1", "/v1/bench", ro.REQUEST_BODY, 1, image),
    ]


def router_process(name: str, tmp: Path, *settings: str) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        name,
        "bench.replicas",
        ["--serve-router", str(port), str(tmp / f"{name}-data"), *settings],
        tmp / f"{name}.log",
        f"http://127.0.0.1:{port}",
    )


def node_process(name: str, tmp: Path, router_url: str, key: str) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        name,
        "bench.router_overhead",
        ["--serve-node", str(port), router_url, key, str(tmp / f"{name}-token")],
        tmp / f"{name}.log",
        f"http://127.0.0.1:{port}",
    )


def node_online(router_url: str) -> bool:
    return ro.NODE_NAME in online_node_names(router_url, ro.ADMIN_KEY)


def accepts(url: str, key: str) -> bool:
    response = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=2)
    return response.status_code == 200


def run_bench(args: argparse.Namespace) -> int:
    from tests.support.postgres import postgres_server
    from tests.support.redis import private_redis_server

    scenarios = plan(args)
    rounds = args.rounds or (4 if args.quick else 10)
    procs: list[ServerProcess] = []
    with (
        tempfile.TemporaryDirectory(prefix="llmlb-bench-") as tmp_name,
        postgres_server() as pg,
        private_redis_server() as redis_server,
    ):
        tmp = Path(tmp_name)
        shared_settings = ["--database-url", pg.database(), "--redis-url", redis_server.url]
        try:
            one = router_process("router-sqlite", tmp)
            one_b = router_process("router-sqlite-b", tmp)
            pair = [router_process(f"router-shared-{i}", tmp, *shared_settings) for i in (1, 2)]
            print(
                f"starting routers: sqlite {one.url}; shared {pair[0].url} and {pair[1].url} "
                f"(PostgreSQL :{pg.port}, Redis :{redis_server.port}) ...",
                flush=True,
            )
            # One after the other: the first router on a fresh database sets the secret_key's
            # salt there; two starting at once can each write their own (seen here: the second
            # then cannot open node credentials the first sealed).
            for proc in (one, one_b, *pair):
                procs.append(proc.start())
                proc.wait_healthy()
            # One stub node per setup (a node registers with one router; the other shared
            # router learns of it through Redis). The admin key is valid on every router.
            node_one = node_process("node-sqlite", tmp, one.url, ro.ADMIN_KEY)
            node_one_b = node_process("node-sqlite-b", tmp, one_b.url, ro.ADMIN_KEY)
            node_two = node_process("node-shared", tmp, pair[0].url, ro.ADMIN_KEY)
            for proc in (node_one, node_one_b, node_two):
                procs.append(proc.start())
            for proc in (node_one, node_one_b, node_two):
                proc.wait_healthy()
            for router in (one, one_b, *pair):
                wait_until(
                    functools.partial(node_online, router.url), 20, f"the node online at {router.name}"
                )
            key_one = create_key(one.url, ro.ADMIN_KEY, "bench-client", ["api"])
            key_two = create_key(pair[0].url, ro.ADMIN_KEY, "bench-client", ["api"])
            wait_until(lambda: accepts(pair[1].url, key_two), 10, "the key on the second shared router")
            shared_health = httpx.get(f"{pair[1].url}/health", timeout=5).json().get("shared_state")
            print(f"shared routers' state: {shared_health}", flush=True)

            def headers(key: str) -> dict[str, str]:
                return {"authorization": f"Bearer {key}", "content-type": "application/json"}

            token = (tmp / "node-sqlite-token").read_text().strip()
            direct = ro.Target("direct", node_one.url, headers(token), router_pids=(one.pid,),
                               node_pid=node_one.pid)  # fmt: skip
            sqlite = ro.Target("sqlite", one.url, headers(key_one), router_pids=(one.pid,),
                               node_pid=node_one.pid)  # fmt: skip
            shared = ro.Target(
                "shared",
                pair[0].url,
                headers(key_two),
                more_urls=(pair[1].url,),
                router_pids=(pair[0].pid, pair[1].pid),
                node_pid=node_two.pid,
                meters={**redis_meters(redis_server.port), "postgres_cpu_ms": postgres_meter(pg.data)},
            )
            shared_one = replace(shared, name="shared-1", more_urls=())
            # Two SQLite routers (each its own node, nothing shared) fed in turn like the shared
            # pair: what alternating between two router processes costs by itself on this
            # machine. The admin key is valid on both.
            sqlite_two = ro.Target(
                "sqlite-2",
                one.url,
                headers(ro.ADMIN_KEY),
                more_urls=(one_b.url,),
                router_pids=(one.pid, one_b.pid),
                node_pid=node_one.pid,
            )
            token_two = (tmp / "node-shared-token").read_text().strip()
            shared_node = ro.Target("shared's node", node_two.url, headers(token_two))
            results = run_async(
                measure(
                    scenarios,
                    direct,
                    sqlite,
                    shared,
                    shared_node,
                    shared_one,
                    sqlite_two,
                    rounds,
                    args.warmup,
                    redis_server.port,
                    args.monitor_requests,
                )
            )
            for proc in procs:
                proc.check_alive()
        except Exception as exc:
            print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            for proc in procs:
                print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
            return 1
        finally:
            for proc in reversed(procs):
                proc.stop()

    report = print_report(results)
    if args.json:
        payload = {
            "benchmark": "replicas",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {
                "scenarios": [[s.name, s.concurrency, s.requests] for s in scenarios],
                "rounds": rounds,
                "warmup": args.warmup,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "target_shared_cpu_ms": TARGET_SHARED_CPU_MS,
            "results": results,
            **report,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="short run (60 / 240 / 40 requests per path)")
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests per path: N for chat c=1 and the image, 4N for chat c=16 (default 400 / 1600 / 200)",
    )
    parser.add_argument("--rounds", type=int, help="alternating batches per scenario (default 10, 4 quick)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per path (default 20)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--monitor-requests",
        type=int,
        default=200,
        metavar="N",
        help="requests per scenario through the shared routers while Redis MONITOR counts round trips "
        "(default 200, at most the scenario's requests)",
    )
    parser.add_argument("--serve-router", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_router:
        settings = {"database_url": args.database_url, "redis_url": args.redis_url, "secret_key": SECRET_KEY}
        ro.serve_router(int(args.serve_router[0]), args.serve_router[1], **settings)
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
