"""Abandoned work: a client that leaves takes its request out of every queue, a running job
stops (mid-image by default: ``cancel = "now"`` kills the node's worker process; at the next
image boundary with ``cancel = "next_image"``), and the router counts a node's slot as taken
until the node reports the job it gave up on as ended.

The balancer and the engine are tested in-process; the rest through real router and node
processes (the synthetic checkpoint, 64x64, and 1024x1024 for an image that takes minutes; the
``steps`` extra sets how long a job takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from PIL import ImageChops

from llmlb_core.protocol import Heartbeat
from llmlb_core.router.balancer import Balancer
from llmlb_node.app import create_node_app
from llmlb_node.settings import NodeSettings
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.engine.runners import InProcessRunner
from llmlb_node.stable_diffusion.engine.sdcpp_calls import clear_callbacks
from tests.support.sd_workers import reaped, worker_pids
from tests.support.servers import ADMIN_KEY, Proc, ThreadServer, admin_get, create_key, node_proc, router_proc
from tests.system.test_sd_engine import folder, job
from tests.unit.test_balancer import FLAGS, registry

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
LONG_STEPS = 16  # a job that is still running while the test acts (seconds on 2 cores)
# One 1024x1024 image takes minutes here (2 steps: 438 s on 2 cores): a job the client leaves
# is always mid-image.
LARGE = {"size": "1024x1024", "steps": 30}
JOB_DONE = re.compile(r"job \d+ \(demo\): \d+ image\(s\)")
CANCELLED = re.compile(r"job \d+ \(demo\): cancelled after (\d+) of (\d+) image\(s\)")
STOPPED = re.compile(
    r"job \d+ \(demo\): stopped mid-image \(([^)]+)\) after [\d.]+s, (\d+) of (\d+) image\(s\) done; "
    r"worker killed, model reloaded in ([\d.]+)s"
)


def generation(steps: int, *, n: int = 1, response_format: str = "b64_json", seed: int = 1) -> dict[str, Any]:
    return {
        "model": "demo",
        "prompt": "a lighthouse",
        "n": n,
        "steps": steps,
        "seed": seed,
        "response_format": response_format,
    }


async def eventually(predicate: Callable[[], bool], within_s: float, what: str) -> float:
    """Poll ``predicate`` without blocking the event loop; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within_s:
            raise TimeoutError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def leave(request: asyncio.Task[Any]) -> None:
    """The client goes away: its request is cancelled and its connection closed."""
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request


def nodes(router: Proc) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in admin_get(router.url, "/v0/nodes")["data"]}


def metric(router: Proc, line_prefix: str) -> float:
    text = httpx.get(f"{router.url}/metrics", headers=ADMIN, timeout=5).text
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def node_health(node: Proc) -> dict[str, Any]:
    return dict(httpx.get(f"{node.url}/health", timeout=5).json())


async def computing(pid: int, cpu_s: float) -> None:
    """Wait until process ``pid`` has spent ``cpu_s`` more seconds of CPU: it is inside sd.cpp."""
    process = psutil.Process(pid)
    start = sum(process.cpu_times()[:2])
    await eventually(lambda: sum(process.cpu_times()[:2]) - start >= cpu_s, 60, f"{pid} to compute")


def api(router: Proc, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, headers={"authorization": f"Bearer {key}"}, timeout=120)


# --- balancer -------------------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_queue_at_once(tmp_path: Path) -> None:
    balancer = Balancer(registry(tmp_path, a=["m"]), queue_max=10, queue_timeout_s=30)
    held = await balancer.acquire("m", FLAGS)
    gone = asyncio.create_task(balancer.acquire("m", FLAGS))
    behind = asyncio.create_task(balancer.acquire("m", FLAGS))
    await asyncio.sleep(0.01)
    assert balancer.queue_depth == 2
    await leave(gone)
    assert balancer.queue_depth == 1
    balancer.release(held)
    lease = await asyncio.wait_for(behind, 1)
    assert lease.queued and lease.node.inflight == 1 and balancer.queue_depth == 0


async def test_a_slot_handed_to_a_waiter_as_it_is_cancelled_goes_back(tmp_path: Path) -> None:
    balancer = Balancer(registry(tmp_path, a=["m"]), queue_max=10, queue_timeout_s=30)
    held = await balancer.acquire("m", FLAGS)
    waiter = asyncio.create_task(balancer.acquire("m", FLAGS))
    await asyncio.sleep(0.01)
    balancer.release(held)  # hands the slot to the waiter (its future is done)...
    waiter.cancel()  # ...which is cancelled before it could run again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert held.node.inflight == 0 and held.node.free == 1
    assert (await asyncio.wait_for(balancer.acquire("m", FLAGS), 1)).node.id == "a"


async def test_an_abandoned_job_holds_its_slot_until_a_heartbeat_shows_it_ended(tmp_path: Path) -> None:
    registry_ = registry(tmp_path, a=["m"])
    balancer = Balancer(registry_, queue_max=10, queue_timeout_s=30)
    lease = await balancer.acquire("m", FLAGS)
    balancer.release(lease, abandoned=True)  # the client left; the node may still run it
    node = lease.node
    assert (node.inflight, node.abandoned, node.free) == (0, 1, 0)
    waiter = asyncio.create_task(balancer.acquire("m", FLAGS))
    await asyncio.sleep(0.01)
    assert registry_.heartbeat(Heartbeat(node_id="a", active_jobs=1, free_slots=0, queued_jobs=0))
    await asyncio.sleep(0.01)
    assert node.abandoned == 1 and not waiter.done()  # still running there
    assert registry_.heartbeat(Heartbeat(node_id="a", active_jobs=0, free_slots=1, queued_jobs=0))
    assert (await asyncio.wait_for(waiter, 1)).node is node  # the heartbeat woke the queue
    assert (node.inflight, node.abandoned) == (1, 0)


# --- engine ---------------------------------------------------------------------------------


async def test_images_one_by_one_equal_stable_diffusion_cpps_batch(models_dir: Path) -> None:
    """The engine now runs n images as n calls with seeds seed+i; the pixels are the ones one
    ``batch_count=n`` call gives (what the node returned before)."""
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image")
    try:
        two = job(images=2, seed=11)
        ours = await engine.generate(folder(models_dir), two)
        runner = engine.runner
        assert isinstance(runner, InProcessRunner)

        def batch() -> list[Any]:
            try:
                return list(
                    runner.context.generate_image(
                        prompt=two.args.prompt,
                        negative_prompt=two.args.negative_prompt,
                        width=two.args.width,
                        height=two.args.height,
                        cfg_scale=two.args.cfg_scale,
                        sample_method=two.args.sample_method,
                        sample_steps=two.args.sample_steps,
                        seed=two.args.seed,
                        batch_count=2,
                    )
                )
            finally:
                clear_callbacks()

        theirs = await engine._run(batch)
        assert len(ours) == len(theirs) == 2
        for mine, batched in zip(ours, theirs, strict=True):
            assert ImageChops.difference(mine.convert("RGB"), batched.convert("RGB")).getbbox() is None
        assert ImageChops.difference(ours[0].convert("RGB"), ours[1].convert("RGB")).getbbox() is not None
    finally:
        await engine.stop()


async def test_a_job_waiting_for_the_engine_is_dropped_at_once(models_dir: Path) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        running = asyncio.create_task(engine.generate(folder(models_dir), job(sample_steps=8)))
        await eventually(lambda: engine.active_jobs == 1, 30, "the first job to run")
        waiting = asyncio.create_task(engine.generate(folder(models_dir), job()))
        await eventually(lambda: engine.waiting_jobs == 1, 5, "the second job to queue")
        await leave(waiting)
        assert engine.waiting_jobs == 0 and not running.done()
        assert len(await running) == 1
        assert engine._job_counter == 1  # the dropped job never ran
    finally:
        await engine.stop()


async def test_a_running_job_stops_at_the_next_image_boundary(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image")
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            four = asyncio.create_task(engine.generate(folder(models_dir), job(images=4, sample_steps=6)))
            await eventually(lambda: "image 1/4 done" in caplog.text, 60, "the first image")
            four.cancel()
            await asyncio.sleep(0.05)
            # The image in progress cannot be interrupted: the job keeps the engine until it ends.
            assert not four.done() and engine.active_jobs == 1
            with pytest.raises(asyncio.CancelledError):
                await four
        [(done, total)] = CANCELLED.findall(caplog.text)
        assert total == "4" and 1 <= int(done) < 4
        assert engine.active_jobs == 0 and not engine._lock.locked()
        [image] = await engine.generate(folder(models_dir), job())  # the engine serves on
        assert image.size == (64, 64)
    finally:
        await engine.stop()


@pytest.fixture
def lone_node(models_dir: Path) -> Iterator[tuple[ThreadServer, SDEngine, str]]:
    """A node app (not registered anywhere) on loopback: its server, engine and credential."""
    settings = NodeSettings(
        router_url="http://127.0.0.1:9",
        models_dir=str(models_dir),
        runtimes=["stable_diffusion"],
        runtime_settings={"stable_diffusion": {"threads": 2, "idle_unload_s": 0}},
    )
    app = create_node_app(settings, register=False)
    server = ThreadServer(app).start()
    try:
        yield server, app.state.node_runtimes[0].engine, app.state.node_token
    finally:
        server.stop()


async def test_a_request_queued_on_a_node_is_dropped_when_its_client_leaves(
    lone_node: tuple[ThreadServer, SDEngine, str],
) -> None:
    server, engine, token = lone_node
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=120) as client:
        running = asyncio.create_task(client.post("/v1/images/generations", json=generation(LONG_STEPS)))
        await eventually(lambda: engine.active_jobs == 1, 60, "the first job to run")
        queued = asyncio.create_task(client.post("/v1/images/generations", json=generation(1)))
        await eventually(lambda: engine.waiting_jobs == 1, 10, "the second job to queue")
        await leave(queued)
        await eventually(lambda: engine.waiting_jobs == 0, 2, "the node to drop the queued job")
        assert not running.done()
        assert (await running).status_code == 200
    assert engine._job_counter == 1  # the job whose client left never ran


# --- router and nodes as processes ----------------------------------------------------------


async def test_queued_clients_that_leave_lose_their_place(router: Proc, sd_node: Proc, api_key: str) -> None:
    async with api(router, api_key) as client:
        assert (await client.post("/v1/images/generations", json=generation(1))).status_code == 200
        running = asyncio.create_task(client.post("/v1/images/generations", json=generation(LONG_STEPS)))
        await eventually(lambda: nodes(router)[sd_node_id(router)]["inflight"] == 1, 10, "the long job")
        queued = [
            asyncio.create_task(client.post("/v1/images/generations", json=generation(1, seed=s)))
            for s in range(3)
        ]
        await eventually(lambda: metric(router, "llmlb_queue_depth") == 3, 10, "3 queued requests")
        started = time.monotonic()
        for request in queued:
            await leave(request)
        await eventually(lambda: metric(router, "llmlb_queue_depth") == 0, 5, "an empty queue")
        assert time.monotonic() - started < 2.0  # at once, not when their turn would have come
        assert not running.done(), "the long job ended too early for this test; raise LONG_STEPS"
        behind = await client.post("/v1/images/generations", json=generation(1, seed=9))
        assert (await running).status_code == 200
    assert behind.status_code == 200
    assert behind.headers["x-queue-status"] == "queued"
    assert behind.headers["x-queue-position"] == "1"  # nobody left ahead of it but the long job
    assert len(JOB_DONE.findall(sd_node.log())) == 3  # warm-up, long job, this one: no ghosts
    left = 'llmlb_requests_total{method="POST",route="/v1/images/generations",status="499"}'
    assert metric(router, left) == 3  # counted as "client closed request", not as failures


def sd_node_id(router: Proc) -> str:
    [node_id] = nodes(router)
    return node_id


def quiet_cluster(
    tmp_path: Path, models_dir: Path, procs: list[Proc], names: list[str], *extra: str
) -> tuple[Proc, list[Proc], str]:
    """A router and nodes that heartbeat only every 300 s (longer than the test: only an early
    heartbeat can free an abandoned slot), and an API key."""
    router = router_proc(tmp_path, env={"LLMLB_NODE_TIMEOUT_S": "900"})
    procs.append(router)
    router.start().wait_healthy()
    node_key = create_key(router.url, ["node"], name="nodes")
    started = []
    for name in names:
        node = node_proc(
            tmp_path,
            router.url,
            models_dir,
            node_key,
            name=name,
            extra=["--threads", "1", "--heartbeat-interval", "300", *extra],
        )
        procs.append(node)
        started.append(node.start())
    for node in started:
        node.wait_healthy(60).wait_online(router.url)
    return router, started, create_key(router.url, ["api"], name="client")


@pytest.fixture
def quiet_pair(tmp_path: Path, models_dir: Path, procs: list[Proc]) -> tuple[Proc, list[Proc], str]:
    """Two quiet nodes that stop a job at the next image (``--cancel next_image``)."""
    return quiet_cluster(tmp_path, models_dir, procs, ["sd-x", "sd-y"], "--cancel", "next_image")


async def test_a_relayed_client_that_leaves_keeps_the_slot_counted_until_the_node_ends_the_job(
    quiet_pair: tuple[Proc, list[Proc], str],
) -> None:
    router, pair, key = quiet_pair
    async with api(router, key) as client:
        warm = await asyncio.gather(
            *(client.post("/v1/images/generations", json=generation(1)) for _ in range(2))
        )
        assert {r.headers["x-llmlb-node"] for r in warm} == set(nodes(router))  # both loaded
        long_job = asyncio.create_task(client.post("/v1/images/generations", json=generation(LONG_STEPS)))
        await eventually(lambda: any(n["inflight"] for n in nodes(router).values()), 10, "the long job")
        [x] = [node_id for node_id, n in nodes(router).items() if n["inflight"]]
        short = await client.post("/v1/images/generations", json=generation(1))
        y = short.headers["x-llmlb-node"]
        assert y != x  # y is now the node picked last: x would be preferred were it free
        await asyncio.sleep(0.2)
        assert not long_job.done(), "the long job ended too early for this test; raise LONG_STEPS"
        await leave(long_job)
        await eventually(lambda: nodes(router)[x]["inflight"] == 0, 5, "the router to see the client leave")
        seen = nodes(router)[x]
        assert (seen["abandoned"], seen["free_slots"]) == (1, 0)  # the node still generates
        assert metric(router, f'llmlb_node_abandoned{{node="{x}"}}') == 1.0
        nxt = await client.post("/v1/images/generations", json=generation(1))
        assert nxt.status_code == 200
        assert nxt.headers["x-llmlb-node"] == y and "x-queue-status" not in nxt.headers
        # Only the node's early heartbeat, sent when the job ended, can clear it this soon.
        await eventually(lambda: nodes(router)[x]["abandoned"] == 0, 150, "the node to report the job gone")
    assert nodes(router)[x]["free_slots"] == 1
    assert metric(router, f'llmlb_node_abandoned{{node="{x}"}}') == 0.0
    node_x = next(p for p in pair if p.args[p.args.index("--name") + 1] == nodes(router)[x]["name"])
    assert CANCELLED.findall(node_x.log()) == [("0", "1")]  # it finished the image for nobody


@pytest.fixture
def next_image_node(tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc]) -> Proc:
    """A node that stops a job at the next image (the behaviour before worker processes)."""
    env = {"LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__CANCEL": "next_image"}
    proc = node_proc(
        tmp_path, router.url, models_dir, node_key, name="sd-next", extra=["--threads", "2"], env=env
    )
    procs.append(proc)
    return proc.start().wait_healthy(60).wait_online(router.url)


async def test_an_n4_job_stops_at_an_image_boundary_when_its_client_leaves(
    router: Proc, next_image_node: Proc, api_key: str
) -> None:
    sd_node = next_image_node
    async with api(router, api_key) as client:
        assert (await client.post("/v1/images/generations", json=generation(1))).status_code == 200
        four = asyncio.create_task(
            client.post("/v1/images/generations", json=generation(4, n=4, response_format="url"))
        )
        await eventually(lambda: "image 1/4 done" in sd_node.log(), 60, "the first of 4 images")
        await leave(four)
        await eventually(lambda: bool(CANCELLED.findall(sd_node.log())), 60, "the job to stop")
        [(done, total)] = CANCELLED.findall(sd_node.log())
        assert total == "4" and 1 <= int(done) < 4
        await eventually(
            lambda: (n := nodes(router)[sd_node_id(router)])["abandoned"] == 0 and n["free_slots"] == 1,
            5,
            "the slot back",
        )


# --- stopping mid-image (cancel = "now", the default) ------------------------------------------


async def test_an_abandoned_1024_image_frees_its_node_within_10s_and_the_next_is_served_at_once(
    tmp_path: Path, models_dir: Path, procs: list[Proc]
) -> None:
    """The issue's case: one node, a 1024x1024 30-step request whose client leaves mid-image.
    The node kills its worker process, reports the job gone (its only heartbeat in this test:
    sent after the job ended, or the router would hold the slot for 300 s), and loads the model
    again; a request sent then is not queued."""
    router, [node], key = quiet_cluster(tmp_path, models_dir, procs, ["sd-big"])
    node_id = sd_node_id(router)
    async with api(router, key) as client:
        assert (await client.post("/v1/images/generations", json=generation(1))).status_code == 200
        [worker] = worker_pids(node.popen.pid)  # type: ignore[union-attr]
        large = asyncio.create_task(client.post("/v1/images/generations", json={**generation(1), **LARGE}))
        await eventually(lambda: node_health(node)["active_jobs"] == 1, 10, "the large job to start")
        await computing(worker, 1.0)
        assert not large.done()
        left = time.monotonic()
        await leave(large)
        await eventually(
            lambda: (n := nodes(router)[node_id])["abandoned"] == 0 and n["free_slots"] == 1,
            10,
            "the router to see the node free",
        )
        freed_s = time.monotonic() - left
        sent = time.monotonic()
        nxt = await client.post("/v1/images/generations", json=generation(1, seed=2))
        next_s = time.monotonic() - sent
    assert nxt.status_code == 200 and "x-queue-status" not in nxt.headers
    assert freed_s < 10 and next_s < 10, (freed_s, next_s)
    assert reaped(worker)  # killed, and no zombie left
    [(reason, done, total, reload_s)] = STOPPED.findall(node.log())
    assert (reason, done, total) == ("client gone", "0", "1")
    status = node_health(node)["runtime_status"]["stable_diffusion"]
    assert (status["cancel"], status["stopped_mid_image"], status["reloads"]) == ("now", 1, 1)
    assert status["last_reload_s"] == pytest.approx(float(reload_s), abs=0.01)
    assert status["worker_pid"] not in (None, worker)
    print(
        f"\n1024x1024 left mid-image: node free in {freed_s:.2f}s (router's view), model reloaded in "
        f"{reload_s}s, next request answered in {next_s:.2f}s"
    )


async def test_a_streamed_image_left_mid_image_frees_its_node(
    tmp_path: Path, models_dir: Path, procs: list[Proc]
) -> None:
    """Streamed: the client leaves after the first partial image, while the image is half done."""
    router, [node], key = quiet_cluster(tmp_path, models_dir, procs, ["sd-stream"])
    node_id = sd_node_id(router)
    body = {**generation(20), "stream": True, "partial_images": 3}
    async with api(router, key) as client:
        assert (await client.post("/v1/images/generations", json=generation(1))).status_code == 200
        async with client.stream("POST", "/v1/images/generations", json=body) as answer:
            assert answer.status_code == 200
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    break  # the first partial image (step 5 of 20) is in: leave
        left = time.monotonic()
        await eventually(
            lambda: (n := nodes(router)[node_id])["abandoned"] == 0 and n["free_slots"] == 1,
            10,
            "the router to see the node free",
        )
        freed_s = time.monotonic() - left
    await eventually(lambda: STOPPED.search(node.log()) is not None, 30, "the model to be reloaded")
    [(reason, done, total, _)] = STOPPED.findall(node.log())
    assert (reason, done, total) == ("client gone", "0", "1")
    assert freed_s < 10


async def test_a_job_past_max_job_seconds_is_a_504_through_the_router_not_retried(
    tmp_path: Path, models_dir: Path, procs: list[Proc]
) -> None:
    """Two nodes that allow 2 s of generation per job: a 1024x1024 30-step request is stopped by
    the node that took it (mid-image), and the router answers its 504 ``job_timeout`` as it is:
    the other node never sees the job (it would run as long there) and neither is suspect."""
    router, pair, key = quiet_cluster(tmp_path, models_dir, procs, ["sd-a", "sd-b"], "--max-job-seconds", "2")
    async with api(router, key) as client:
        started = time.monotonic()
        answer = await client.post("/v1/images/generations", json={**generation(1), **LARGE})
        took = time.monotonic() - started
    assert answer.status_code == 504, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == ("job_timeout", "server_error"), error
    assert "max_job_seconds" in error["message"] and took < 30, (error, took)
    await eventually(lambda: any(STOPPED.search(n.log()) for n in pair), 30, "the node's stop line")
    stops = [STOPPED.findall(n.log()) for n in pair]
    assert sorted(len(s) for s in stops) == [0, 1], stops
    [(reason, _, _, _)] = next(s for s in stops if s)
    assert "max_job_seconds" in reason
    idle = next(n for n, s in zip(pair, stops, strict=True) if not s)
    assert "job 1" not in idle.log()  # the other node never ran it
    assert not any(n["suspect"] for n in nodes(router).values())
