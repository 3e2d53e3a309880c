"""Jobs that stop: the engine's worker process (``cancel = "now"``, the default) against the
in-process engine (``cancel = "next_image"``), on the synthetic checkpoint with real
stable-diffusion.cpp:

- a cancelled image stops within 2 s mid-image: the worker is killed and reaped, the model is
  loaded again in a fresh worker (one log line with the cost; counted in the engine's status),
  and the next job is served;
- ``max_job_seconds``: 504 ``job_timeout`` mid-image with ``now``, at the next image with
  ``next_image``; a node answers it over HTTP;
- the engine process never loads the weights itself with ``now``, and one worker at a time;
- a worker never outlives its node (SIGKILL, or a terminal's second Ctrl-C, mid-image).

A 1024x1024 image takes minutes here (2 steps: 438 s on 2 cores), so a job of one is always
mid-image when the test acts; the tests wait until the worker has computed (its CPU time), not
for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmlb_core.server.errors import OpenAIError
from llmlb_node.app import create_node_app
from llmlb_node.settings import NodeSettings
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from tests.support.engine_jobs import job
from tests.support.models import DEMO_MODEL
from tests.support.sd_workers import ended, reaped, worker_pids
from tests.support.servers import Proc, ThreadServer, node_proc, wait_until
from tests.system.test_abandoned import computing, eventually, leave
from tests.system.test_sd_engine import folder

MIB = 1024 * 1024
LARGE = {"width": 1024, "height": 1024, "sample_steps": 30}
STOPPED = re.compile(
    r"job (\d+) \(demo\): stopped mid-image \(([^)]+)\) after ([\d.]+)s, (\d+) of (\d+) image\(s\) done; "
    r"worker killed, model reloaded in ([\d.]+)s"
)


async def test_a_cancelled_image_stops_within_2s_and_the_model_is_loaded_again(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            await engine.generate(folder(models_dir), job())
            worker = engine.runner.pid()
            assert worker is not None and worker != os.getpid()
            large = asyncio.create_task(engine.generate(folder(models_dir), job(**LARGE)))
            await eventually(lambda: engine.active_jobs == 1, 10, "the large job to start")
            await computing(worker, 1.0)
            cancelled = time.monotonic()
            await leave(large)
            stopped_s = time.monotonic() - cancelled
            assert stopped_s < 2.0
            assert engine.active_jobs == 0 and engine.jobs() == []
            assert reaped(worker)  # SIGKILLed and collected: no zombie
            await eventually(lambda: not engine.status()["reloading"], 30, "the reload")
            [(job_id, reason, _, done, total, reload_s)] = STOPPED.findall(caplog.text)
            assert (job_id, reason, done, total) == ("2", "client gone", "0", "1")
            status = engine.status()
            assert (status["stopped_mid_image"], status["reloads"]) == (1, 1)
            assert status["last_reload_s"] == pytest.approx(float(reload_s), abs=0.01)
            assert status["worker_pid"] not in (None, worker) and status["loaded_model"] == DEMO_MODEL
            [image] = await engine.generate(folder(models_dir), job())  # served by the fresh worker
            assert image.size == (64, 64)
        assert "cancelled after" not in caplog.text  # one line for the stop, the reload's
    finally:
        await engine.stop()
    assert engine.runner.pid() is None


async def test_max_job_seconds_stops_an_image_in_progress_with_a_504(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0, max_job_seconds=0)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            await engine.generate(folder(models_dir), job())  # the load is not part of the limit
            engine.max_job_seconds = 1.0
            started = time.monotonic()
            with pytest.raises(OpenAIError) as timed_out:
                await engine.generate(folder(models_dir), job(**LARGE))
            took = time.monotonic() - started
            engine.max_job_seconds = 0
            error = timed_out.value
            assert (error.status, error.code, error.type) == (504, "job_timeout", "server_error")
            assert "max_job_seconds" in error.message and "fewer steps, a smaller size" in error.message
            assert 1.0 <= took < 3.0
            assert engine.active_jobs == 0
            [image] = await engine.generate(folder(models_dir), job())  # waits for the reload
            assert image.size == (64, 64)
        [(_, reason, _, done, total, _)] = STOPPED.findall(caplog.text)
        assert (reason, done, total) == ("max_job_seconds = 1s passed", "0", "1")
    finally:
        await engine.stop()


async def test_with_next_image_a_job_past_max_job_seconds_gets_no_further_image(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image", max_job_seconds=0.01)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"), pytest.raises(OpenAIError) as timed_out:
            await engine.generate(folder(models_dir), job(images=3))
        assert timed_out.value.status == 504 and timed_out.value.code == "job_timeout"
        assert "1 of 3 image(s) done" in timed_out.value.message  # the image in progress ended
        stopped = "job 1 (demo): stopped at an image boundary (max_job_seconds = 0.01s passed) after "
        assert stopped in caplog.text and "s, 1 of 3 image(s) done" in caplog.text
        status = engine.status()
        assert (status["cancel"], status["worker_pid"], status["reloads"]) == ("next_image", None, 0)
        assert engine.loaded is not None  # nothing to reload
    finally:
        await engine.stop()


def test_a_node_answers_a_job_past_max_job_seconds_with_504_job_timeout(models_dir: Path) -> None:
    """Over HTTP, as the router sees it (the router passes a 504 ``job_timeout`` on, never
    retrying it elsewhere: the same job would take as long there). The setting reaches the
    engine; the test lowers it after the warm-up (a fresh worker's first image is slower)."""
    settings = NodeSettings(
        router_url="http://127.0.0.1:9",
        models_dir=str(models_dir),
        runtimes=["stable_diffusion"],
        runtime_settings={"stable_diffusion": {"threads": 2, "idle_unload_s": 0, "max_job_seconds": 30}},
    )
    app = create_node_app(settings, register=False)
    engine = app.state.node_runtimes[0].engine
    assert (engine.cancel, engine.max_job_seconds) == ("now", 30)
    server = ThreadServer(app).start()
    try:
        auth = {"authorization": f"Bearer {app.state.node_token}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=120) as http:
            warm = http.post("/v1/images/generations", json={"model": DEMO_MODEL, "prompt": "x", "steps": 1})
            assert warm.status_code == 200
            engine.max_job_seconds = 1
            body = {"model": DEMO_MODEL, "prompt": "x", "size": "1024x1024", "steps": 30}
            started = time.monotonic()
            answer = http.post("/v1/images/generations", json=body)
            took = time.monotonic() - started
        assert answer.status_code == 504 and took < 5
        error = answer.json()["error"]
        assert error["code"] == "job_timeout" and error["type"] == "server_error"
        assert "max_job_seconds" in error["message"]
    finally:
        server.stop()


async def test_the_node_never_holds_the_weights_and_one_worker_at_a_time(
    models_dir: Path, tmp_path: Path
) -> None:
    """Switching models ends the old worker (its memory goes back with it); the engine's own
    process stays small."""
    from tests.support.models import copy_model

    copy_model(models_dir, tmp_path, "other")
    engine = SDEngine(threads=2, idle_unload_s=0)
    me = psutil.Process()
    try:
        before = me.memory_info().rss
        seen = []
        for name, models in ((DEMO_MODEL, models_dir), ("other", tmp_path), (DEMO_MODEL, models_dir)):
            await engine.generate(folder(models, name), job())
            seen.append(engine.runner.pid())
            assert worker_pids(os.getpid()) == [seen[-1]]  # one worker: the old one ended
            assert psutil.Process(seen[-1]).memory_info().rss > 400 * MIB  # the weights are there
        assert len(set(seen)) == 3 and all(reaped(pid) for pid in seen[:2])
        assert me.memory_info().rss - before < 150 * MIB  # the 852 MiB checkpoint is not here
    finally:
        await engine.stop()
    assert reaped(seen[-1])


@pytest.mark.parametrize("how", ["SIGKILL", "second Ctrl-C"])
def test_no_worker_outlives_its_node(
    how: str, tmp_path: Path, router: Proc, node_key: str, api_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    """The node dies mid-image (SIGKILL to it alone, or a terminal's Ctrl-C twice to its process
    group, which the worker itself ignores): its worker ends with it."""
    node = node_proc(tmp_path, router.url, models_dir, node_key, name="mortal", extra=["--threads", "1"])
    procs.append(node)
    node.start().wait_healthy(60).wait_online(router.url)
    assert node.popen is not None
    headers = {"authorization": f"Bearer {api_key}"}
    body = {"model": DEMO_MODEL, "prompt": "x", "steps": 1, "response_format": "b64_json"}
    assert httpx.post(
        f"{router.url}/v1/images/generations", json=body, headers=headers, timeout=60
    ).is_success
    [worker] = worker_pids(node.popen.pid)

    def large() -> None:  # answered with an error when the node dies; nobody reads it
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{router.url}/v1/images/generations",
                json={**body, "size": "1024x1024", "steps": 30},
                headers=headers,
                timeout=30,
            )

    threading.Thread(target=large, daemon=True).start()
    process = psutil.Process(worker)
    start = sum(process.cpu_times()[:2])
    wait_until(lambda: sum(process.cpu_times()[:2]) - start >= 1.0, 60, "the worker to compute")
    if how == "SIGKILL":
        node.signal(signal.SIGKILL)
    else:
        os.killpg(node.popen.pid, signal.SIGINT)
        wait_until(lambda: "SIGINT: shutting down" in node.log(), 5, "the first Ctrl-C")
        assert not ended(worker)  # the worker ignores Ctrl-C: the node finishes or stops its jobs
        os.killpg(node.popen.pid, signal.SIGINT)
    assert node.popen.wait(10) == (-signal.SIGKILL if how == "SIGKILL" else 128 + signal.SIGINT)
    wait_until(lambda: ended(worker), 5, "the worker to end with its node")
