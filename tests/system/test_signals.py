"""Signals reach a busy node at once (real router and node processes, stable-diffusion.cpp
generating on the node's worker thread meanwhile):

- SIGTERM mid-job logs "draining" at once, the router shows the node draining (and not "back
  online" at its next heartbeats), the job finishes, then the node deregisters and exits;
- Ctrl-C mid-job logs at once, and a second Ctrl-C ends the process at once (exit 130) without
  waiting for the generation;
- a port that is taken is one line and exit 2, for the router and the node.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.support.servers import Proc, node_proc, node_status, router_proc, wait_until

# Every step's progress line at info level: the test sees the job running in the node's log.
EVERY_STEP = {"LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__PROGRESS_LOG_INTERVAL_S": "0"}


def start_node(tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc]) -> Proc:
    node = node_proc(
        tmp_path, router.url, models_dir, node_key, name="busy", extra=["--threads", "1"], env=EVERY_STEP
    )
    procs.append(node)
    return node.start().wait_healthy(60).wait_online(router.url)


def generate_in_background(router: Proc, api_key: str, steps: int) -> dict[str, httpx.Response | Exception]:
    """POST a generation on a thread; the answer (or the error) lands in the returned dict."""
    result: dict[str, httpx.Response | Exception] = {}

    def post() -> None:
        try:
            result["answer"] = httpx.post(
                f"{router.url}/v1/images/generations",
                headers={"authorization": f"Bearer {api_key}"},
                json={
                    "model": "demo",
                    "prompt": "x",
                    "size": "auto",
                    "steps": steps,
                    "response_format": "b64_json",
                },
                timeout=300,
            )
        except Exception as exc:  # the test reads it
            result["answer"] = exc

    threading.Thread(target=post, daemon=True).start()
    return result


def lines_after(log: str, marker: str) -> str:
    return log[log.index(marker) :]


def test_sigterm_mid_job_drains_at_once_and_the_job_finishes(
    tmp_path: Path, router: Proc, node_key: str, api_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    node = start_node(tmp_path, router, node_key, models_dir, procs)
    result = generate_in_background(router, api_key, steps=6)
    wait_until(lambda: "step 1/6" in node.log(), 120, "the job's first step")
    signalled = time.monotonic()
    node.signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: draining" in node.log(), 3, "the draining line")
    assert time.monotonic() - signalled < 3
    # Logged while the job was still running: its end comes after.
    assert "1 image(s)" not in node.log().split("SIGTERM: draining")[0]
    wait_until(lambda: node_status(router.url, "busy") == "draining", 5, "router sees the node draining")
    wait_until(lambda: "answer" in result, 180, "the generation's answer")
    answer = result["answer"]
    assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
    assert node.popen is not None
    assert node.popen.wait(30) == 0
    after = lines_after(node.log(), "SIGTERM: draining")
    assert after.index("job 1 (demo): 1 image(s)") < after.index("drained: no job left")
    assert after.index("drained: no job left") < after.index("deregistered from router")
    # The draining node kept heartbeating (every 0.3 s) and was never announced back online.
    assert "back online" not in router.log()
    assert "is draining" in router.log()


def test_a_second_ctrl_c_exits_at_once_mid_job(
    tmp_path: Path, router: Proc, node_key: str, api_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    node = start_node(tmp_path, router, node_key, models_dir, procs)
    result = generate_in_background(router, api_key, steps=150)
    wait_until(lambda: "step 1/150" in node.log(), 120, "the job's first step")
    node.signal(signal.SIGINT)
    wait_until(
        lambda: "SIGINT: shutting down after the requests in progress" in node.log(), 3, "first Ctrl-C"
    )
    assert node.popen is not None and node.popen.poll() is None  # it waits for the job
    stopped = time.monotonic()
    node.signal(signal.SIGINT)
    assert node.popen.wait(5) == 128 + signal.SIGINT
    assert time.monotonic() - stopped < 5
    assert "second SIGINT: exiting now; requests in progress are abandoned" in node.log()
    assert "step 150/150" not in node.log()
    wait_until(lambda: "answer" in result, 30, "the client's answer")
    answer = result["answer"]
    assert isinstance(answer, httpx.Response) and answer.status_code >= 500, answer
    assert "Traceback" not in node.log()


def test_a_taken_port_is_one_clean_line_and_exit_2(
    tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc]
) -> None:
    port = int(router.url.rsplit(":", 1)[1])
    twin = router_proc(tmp_path, port=port, data_dir=tmp_path / "twin-data")
    twin.log_path = tmp_path / "twin.log"
    clash = node_proc(tmp_path, router.url, models_dir, node_key, port=port, name="clash")
    clash.log_path = tmp_path / "clash.log"
    for proc in (twin, clash):
        procs.append(proc)
        assert proc.start().popen is not None
        assert proc.popen.wait(60) == 2, proc.log()
        log = proc.log()
        assert log.strip().splitlines()[-1] == f"llmlb: port {port} is in use: pick another with --port"
        assert "Traceback" not in log and "ready" not in log and "registered" not in log
