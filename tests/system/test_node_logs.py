"""The node's logs during generations (the engine with its worker process, real
stable-diffusion.cpp on the synthetic checkpoint; sd.cpp's own lines read through the node's
logger ``llmlb.node.sd.cpp``):

- sd.cpp's log reaches Python logging, at debug level, for a load, a txt2img and an img2img;
- progress at info level, at most one line per ``progress_log_interval_s`` (every step with 0),
  each other step at debug level;
- the rest of the process keeps logging while a generation runs (the event loop's lines land
  between the generation's first and last step).

A real node process's own output during a generation (SIGTERM's "draining" line while the job's
steps go on) is checked by ``test_signals``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.models.model_folder import ModelFolder, scan_models
from llmlb_node.stable_diffusion.settings import CancelMode
from tests.support.engine_jobs import job
from tests.support.images_util import gradient
from tests.support.models import DEMO_MODEL

SD_CPP = "llmlb.node.sd.cpp"
ENGINE = "llmlb.node.sd"


def demo(models_dir: Path) -> ModelFolder:
    return {f.id: f for f in scan_models(models_dir).models}[DEMO_MODEL]


def messages(records: list[logging.LogRecord], logger: str, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in records if r.name == logger and (level is None or r.levelno == level)]


@pytest.mark.parametrize("cancel", ["now", "next_image"])
async def test_sdcpp_log_reaches_python_logging_at_debug_for_load_txt2img_and_img2img(
    cancel: CancelMode, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From the worker process (``now``: relayed, at the level this process keeps) and in-process."""
    caplog.set_level(logging.DEBUG, logger=SD_CPP)
    engine = SDEngine(threads=2, idle_unload_s=0, cancel=cancel)
    try:
        await engine.generate(demo(models_dir), job(sample_steps=1))
        loaded_and_txt2img = list(caplog.records)
        caplog.clear()
        await engine.generate(
            demo(models_dir), job(sample_steps=2, init_image=gradient(64, 64), strength=0.5)
        )
        img2img = list(caplog.records)
    finally:
        await engine.stop()
    load = messages(loaded_and_txt2img, SD_CPP)
    assert any("loading model from" in m for m in load), load[:20]
    assert any("generate_image 64x64" in m for m in load)
    assert any("generate_image completed" in m for m in load)
    second = messages(img2img, SD_CPP)
    assert any("IMG2IMG" in m for m in second), second
    assert any("encode_first_stage completed" in m for m in second)
    assert not any("loading model from" in m for m in second)  # loaded once
    # sd.cpp's info and debug lines are debug lines here; nothing of it at info.
    every = [r for r in loaded_and_txt2img + img2img if r.name == SD_CPP]
    assert every and {r.levelno for r in every} <= {logging.DEBUG, logging.WARNING, logging.ERROR}
    assert not messages(every, SD_CPP, logging.INFO)


async def test_progress_lines_at_info_are_throttled_and_every_step_is_at_debug(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ENGINE)
    engine = SDEngine(threads=2, idle_unload_s=0, progress_log_interval_s=0)
    try:
        await engine.generate(demo(models_dir), job(sample_steps=3, images=2))
        every_step = list(caplog.records)
        caplog.clear()
        engine.progress_log_interval_s = 3600
        await engine.generate(demo(models_dir), job(sample_steps=3))
        throttled = list(caplog.records)
    finally:
        await engine.stop()
    steps = [m for m in messages(every_step, ENGINE, logging.INFO) if ": step " in m]
    assert [m.split(",")[0] for m in steps] == [
        f"job 1 (demo): step {step}/3 (image {image}/2)" for image in (1, 2) for step in (1, 2, 3)
    ]
    assert all(" s/step, about " in m and m.endswith("s left") for m in steps)
    assert steps[-1].endswith("about 0s left")
    # An hour between lines: no step at info, each at debug, and the job's own lines at info.
    assert not [m for m in messages(throttled, ENGINE, logging.INFO) if ": step " in m]
    assert [m.split(",")[0] for m in messages(throttled, ENGINE, logging.DEBUG) if ": step " in m] == [
        f"job 2 (demo): step {step}/3" for step in (1, 2, 3)
    ]
    assert any(m.startswith("job 2 (demo): 1 image(s) 64x64 in ") for m in messages(throttled, ENGINE))


async def test_the_process_keeps_logging_while_a_generation_runs(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ticker_log = logging.getLogger("llmlb.test.ticker")
    engine = SDEngine(threads=2, idle_unload_s=0, progress_log_interval_s=0)

    async def tick() -> None:
        while True:
            ticker_log.info("tick")
            await asyncio.sleep(0.02)

    ticker = asyncio.create_task(tick())
    try:
        await engine.generate(demo(models_dir), job(sample_steps=4))
    finally:
        ticker.cancel()
        await engine.stop()
    records = list(caplog.records)
    steps = [i for i, r in enumerate(records) if r.name == ENGINE and ": step " in r.getMessage()]
    assert len(steps) == 4
    assert {records[i].threadName for i in steps} != {threading.current_thread().name}  # the worker
    between = records[steps[0] : steps[-1]]
    ticks = [r for r in between if r.name == "llmlb.test.ticker"]
    assert ticks and all(r.threadName == threading.current_thread().name for r in ticks)
