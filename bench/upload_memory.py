"""Router memory and event-loop latency under image edits with large uploads, before and after.

Run: ``.venv/bin/python -m bench.upload_memory`` (``--json PATH`` to keep the numbers). For the
baseline commit (``BASELINE``, exported with ``git archive`` into a temporary directory, or
``--baseline-tree DIR``) and then for this working tree, it starts on loopback:

- a router (the code of that tree, imported first from that directory);
- a node process of the same tree with a **stand-in runtime**: it reads each edit's body and at
  once answers a small PNG. Only the router's part is measured: its memory and event loop are
  what this is about, and generation time would only stretch the runs.

and measures, with four 4096x4096 PNG uploads per edit (``image[]`` parts, ``b64_json``):

- router RSS at rest (after one small warm-up edit), its peak during 1 edit, a 2nd single edit
  and 10 edits at once, and what is left a few seconds after each (``/proc/PID/status``, sampled
  every 5 ms); wall and router CPU time of the 10 edits;
- ``GET /health`` latency (p50 and max, one request after another) during 5 edits at once.

The processes run this module again in an internal sub-mode (``--serve``).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from bench import _common
from bench._common import (
    REPO,
    ServerProcess,
    cpu_seconds,
    free_port,
    median,
    percentile,
    rss_bytes,
    wait_until,
)

BASELINE = "d01a649"
ADMIN_KEY = "sk-llmlb-bench-admin-key-0123456789abcdef"
MODEL = "bench-sd"
NODE_NAME = "bench-images-node"
IMAGE_SIDE = 4096
IMAGES_PER_EDIT = 4
SETTLE_S = 3.0
MB = 1024 * 1024


# --------------------------------------------------------------------------- inputs


def big_png(seed: int, side: int = IMAGE_SIDE) -> bytes:
    """A ``side`` x ``side`` RGB PNG that compresses to ~100 KB: flat colour and a few lines."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (seed * 40 % 256, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(0, side, 512):
        draw.line((0, i, side, side - i), fill=(255, seed * 13 % 256, 0), width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def small_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- server sub-mode


def serve(tree: str, role: str, port: int, arg: str) -> None:
    """Run a router (``arg``: data dir) or a stand-in node (``arg``: router URL) of ``tree``."""
    root = Path(tree).resolve()
    _common.import_from_tree(root)  # that tree's llmlb_core, plugins and node runtimes come first
    app_module = _common.core_module("router.app", "app")

    where = Path(str(app_module.__file__)).resolve()
    assert where.is_relative_to(root), f"{where} is not from {tree}"
    if role == "router":
        _common.serve_router(port, arg, ADMIN_KEY)
    else:
        serve_stand_in_node(port, arg, _common.node_package(root))


def serve_stand_in_node(port: int, router_url: str, package: str) -> None:
    """A node of the tree whose node folder imports as ``package``, with a stand-in runtime.

    It uses only what every tree has had: the ``Runtime`` base class (``models``, ``routes``,
    ``load``), ``create_node_app(settings, runtimes=...)`` and the node's connection settings.
    """
    from llmlb_core.protocol import ModelAdvert

    run = _common.core_module("server.serving", "serving").run

    create_node_app = importlib.import_module(f"{package}.app").create_node_app
    runtime_module = importlib.import_module(f"{package}.runtime")
    node_settings = importlib.import_module(f"{package}.settings").NodeSettings
    runtime_base: Any = runtime_module.Runtime
    runtime_load: Any = runtime_module.RuntimeLoad

    answer = json.dumps(
        {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(small_png()).decode("ascii")}],
            "size": "256x256",
            "output_format": "png",
        }
    ).encode()

    class StandInRuntime(runtime_base):  # type: ignore[misc]
        """Reads an edit's body and answers a small PNG at once."""

        type_name = "bench_images"
        slots = 64  # above the benchmark's concurrency: the router never queues

        def models(self) -> list[ModelAdvert]:
            return [ModelAdvert(id=MODEL, capabilities=["image_generation"], runtime=self.type_name)]

        def load(self) -> Any:
            return runtime_load()

        def routes(self) -> list[BaseRouteHandler]:
            @post("/v1/images/edits", status_code=200)
            async def edits(request: Request[Any, Any, Any]) -> Response[bytes]:
                await request.body()
                return Response(content=answer, media_type="application/json")

            return [edits]

    _common.server_logging()
    key = _common.create_key(router_url, ADMIN_KEY, "bench-node", ["node"])
    settings = node_settings(
        router_url=router_url,
        api_key=key,
        host="127.0.0.1",
        port=port,
        name=NODE_NAME,
        models_dir="/nonexistent",
    )
    app = create_node_app(settings, runtimes=[StandInRuntime()])
    run(app, host=settings.host, port=settings.port, log_level="warning")


# --------------------------------------------------------------------------- measurement


class RssSampler:
    """Samples a process's RSS every 5 ms on a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.005)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class HealthProbe:
    """``GET /health`` one after another on a thread, keeping each latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get(f"{self.url}/health").raise_for_status()
                self.latencies_s.append(time.perf_counter() - started)
                self._stop.wait(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def settled_rss(pid: int) -> int:
    """RSS after the process had ``SETTLE_S`` seconds of quiet (median of five samples)."""
    time.sleep(SETTLE_S)
    samples = []
    for _ in range(5):
        samples.append(rss_bytes(pid))
        time.sleep(0.1)
    return int(median(samples))


def send_edits(url: str, api_key: str, images: list[bytes], n: int) -> float:
    """``n`` edits at once, each with all of ``images``; returns the wall time. Each must be a 200."""

    def one(_: int) -> None:
        response = httpx.post(
            f"{url}/v1/images/edits",
            data={"model": MODEL, "prompt": "bench", "response_format": "b64_json", "size": "256x256"},
            files=[("image[]", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)],
            headers={"authorization": f"Bearer {api_key}"},
            timeout=300,
        )
        if response.status_code != 200:
            raise RuntimeError(f"edit answered {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


@dataclass
class TreeResult:
    label: str
    numbers: dict[str, float] = field(default_factory=dict)


def measure_tree(label: str, slug: str, tree: Path, tmp: Path, images: list[bytes]) -> TreeResult:
    result = TreeResult(label)
    router_port, node_port = free_port(), free_port()
    router = ServerProcess(
        f"{slug} router",
        "bench.upload_memory",
        ["--serve", str(tree), "router", str(router_port), str(tmp / f"{slug}-router-data")],
        tmp / f"{slug}-router.log",
        f"http://127.0.0.1:{router_port}",
    )
    node = ServerProcess(
        f"{slug} node",
        "bench.upload_memory",
        ["--serve", str(tree), "node", str(node_port), router.url],
        tmp / f"{slug}-node.log",
        f"http://127.0.0.1:{node_port}",
    )
    try:
        router.start().wait_healthy()
        node.start().wait_healthy()
        wait_until(lambda: NODE_NAME in _common.online_node_names(router.url, ADMIN_KEY), 30, "node online")
        api_key = _common.create_key(router.url, ADMIN_KEY, "bench-client", ["api"])
        send_edits(router.url, api_key, [small_png()], 1)  # warm-up: imports, first allocations
        rest = settled_rss(router.pid)
        result.numbers["rss_rest_mb"] = rest / MB
        for name, n in SCENARIOS:
            cpu = cpu_seconds(router.pid)
            with RssSampler(router.pid) as sampler:
                result.numbers[f"wall_{name}_s"] = send_edits(router.url, api_key, images, n)
            result.numbers[f"cpu_{name}_s"] = cpu_seconds(router.pid) - cpu
            result.numbers[f"peak_{name}_mb"] = (sampler.peak - rest) / MB
            result.numbers[f"after_{name}_mb"] = (settled_rss(router.pid) - rest) / MB
        with HealthProbe(router.url) as probe:
            time.sleep(0.3)  # a few quiet probes first: the loop's latency at rest is in p50 too
            result.numbers["wall_5_s"] = send_edits(router.url, api_key, images, 5)
        result.numbers["health_p50_ms"] = percentile(probe.latencies_s, 50) * 1000
        result.numbers["health_max_ms"] = max(probe.latencies_s) * 1000
        result.numbers["health_probes"] = len(probe.latencies_s)
        router.check_alive()
    except Exception:
        for proc in (router, node):
            print(f"--- {proc.name} log (tail) ---\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        node.stop()
        router.stop()
    return result


# (name, edits at once), run in this order in one router process.
SCENARIOS = [("1", 1), ("1again", 1), ("10", 10)]
ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("rss_rest_mb", "router RSS at rest (MB)", "{:.0f}".format),
    ("peak_1_mb", "1st edit: RSS peak above rest (MB)", "{:.0f}".format),
    ("after_1_mb", f"1st edit: RSS above rest {SETTLE_S:g}s after (MB)", "{:.0f}".format),
    ("peak_1again_mb", "2nd edit: RSS peak above rest (MB)", "{:.0f}".format),
    ("after_1again_mb", f"2nd edit: RSS above rest {SETTLE_S:g}s after (MB)", "{:.0f}".format),
    ("peak_10_mb", "10 edits at once: RSS peak above rest (MB)", "{:.0f}".format),
    ("after_10_mb", f"10 edits: RSS above rest {SETTLE_S:g}s after (MB)", "{:.0f}".format),
    ("wall_10_s", "10 edits at once: wall time (s)", "{:.2f}".format),
    ("cpu_10_s", "10 edits at once: router CPU (s)", "{:.2f}".format),
    ("health_p50_ms", "/health during 5 edits at once: p50 (ms)", "{:.1f}".format),
    ("health_max_ms", "/health during 5 edits at once: max (ms)", "{:.0f}".format),
    ("health_probes", "/health probes answered during those edits", "{:.0f}".format),
]


def print_report(before: TreeResult, after: TreeResult, upload_bytes: list[int]) -> None:
    print(
        f"\n{IMAGES_PER_EDIT} x {IMAGE_SIDE}x{IMAGE_SIDE} PNG per edit "
        f"({', '.join(f'{b // 1024} KB' for b in upload_bytes)}); stand-in node, router measured\n"
    )
    width = max(len(title) for _, title, _ in ROWS)
    print(f"{'':{width}}  {before.label:>14}  {after.label:>14}  {'after/before':>12}")
    for key, title, fmt in ROWS:
        old, new = before.numbers[key], after.numbers[key]
        ratio = f"{new / old:.2f}" if old > 0 and key != "health_probes" else "-"
        print(f"{title:{width}}  {fmt(old):>14}  {fmt(new):>14}  {ratio:>12}")


def export_baseline(target: Path) -> Path:
    """The baseline commit's files in ``target`` (``git archive``: the repository is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", BASELINE], check=True, capture_output=True
    ).stdout
    target.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_bench(args: argparse.Namespace) -> int:
    print(f"writing {IMAGES_PER_EDIT} {IMAGE_SIDE}x{IMAGE_SIDE} PNGs ...", flush=True)
    images = [big_png(seed) for seed in range(IMAGES_PER_EDIT)]
    with tempfile.TemporaryDirectory(prefix="llmlb-upload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        baseline_tree = Path(args.baseline_tree) if args.baseline_tree else export_baseline(tmp / "baseline")
        results = []
        for label, slug, tree in ((BASELINE, "baseline", baseline_tree), ("this tree", "current", REPO)):
            print(f"measuring {label} ({tree}) ...", flush=True)
            results.append(measure_tree(label, slug, tree, tmp, images))
        if not args.baseline_tree:
            shutil.rmtree(baseline_tree, ignore_errors=True)
    before, after = results
    print_report(before, after, [len(i) for i in images])
    if args.json:
        payload = {
            "benchmark": "upload_memory",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "baseline": BASELINE,
            "upload_bytes": [len(i) for i in images],
            "results": {r.label: r.numbers for r in results},
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upload_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--baseline-tree", metavar="DIR", help=f"a checkout of {BASELINE} to use as is")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--serve", nargs=4, metavar=("TREE", "ROLE", "PORT", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        tree, role, port, arg = args.serve
        serve(tree, role, int(port), arg)
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
