"""The StableDiffusion engine on the synthetic checkpoint: mask polarity, weights format choice,
loading on first use, unloading when idle, freeing memory on model switch, load failures that
surface as OpenAI-shaped 503s (remembered until the files change) without breaking the engine,
previews of the chosen steps, job progress, the process-wide callbacks cleared after every call,
and engine options passed on. The engine runs sd.cpp in its worker process (the default,
``cancel = "now"``) unless a test needs it in this process (``cancel = "next_image"``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from PIL import Image

from llmlb_core.protocol import JobProgress
from llmlb_core.server.errors import OpenAIError
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.engine.runners import InProcessRunner
from llmlb_node.stable_diffusion.jobs.loras import plan_loras, prompt_with_loras
from llmlb_node.stable_diffusion.models.model_folder import (
    ModelFolder,
    ModelProfile,
    choose_weights,
    scan_models,
)
from llmlb_node.stable_diffusion.settings import CancelMode
from llmlb_node.stable_diffusion.tools.quantize import quantize
from tests.support.engine_jobs import job
from tests.support.images_util import gradient, mean_abs_diff
from tests.support.models import DEMO_MODEL, MODEL_CACHE, cache_lock, copy_model
from tests.support.servers import REPO

MIB = 1024 * 1024


def folder(models_dir: Path, name: str = DEMO_MODEL) -> ModelFolder:
    return {f.id: f for f in scan_models(models_dir).models}[name]


@pytest.fixture(scope="session")
def dual_models_dir(models_dir: Path) -> Path:
    """A model folder holding the demo weights as safetensors and as q8_0 GGUF."""
    root = MODEL_CACHE.parent / "dual-models"
    target = root / "dual"
    gguf = target / "model-q8_0.gguf"
    with cache_lock():
        if not gguf.exists():
            if target.exists():
                for item in target.iterdir():
                    item.unlink()
                target.rmdir()
            copy_model(models_dir, root, "dual")
            quantize(target / "model.safetensors", "q8_0", gguf)
    return root


async def test_mask_white_means_regenerate(models_dir: Path) -> None:
    """stable-diffusion.cpp's own polarity (no compositing here): compare a half mask with
    all-white and all-black masks; each half follows the run whose mask it shares."""
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        init = gradient(64, 64)
        left_white = Image.new("L", (64, 64), 0)
        left_white.paste(255, (0, 0, 32, 64))
        runs = {}
        for name, mask in (
            ("half", left_white),
            ("white", Image.new("L", (64, 64), 255)),
            ("black", Image.new("L", (64, 64), 0)),
        ):
            [out] = await engine.generate(
                folder(models_dir), job(init_image=init, mask_image=mask, strength=0.9, sample_steps=2)
            )
            runs[name] = out
        left, right = (0, 0, 32, 64), (32, 0, 64, 64)
        assert mean_abs_diff(runs["half"], runs["white"], left) < mean_abs_diff(
            runs["half"], runs["black"], left
        )
        assert mean_abs_diff(runs["half"], runs["black"], right) < mean_abs_diff(
            runs["half"], runs["white"], right
        )
    finally:
        await engine.stop()


def test_choose_weights_by_environment(dual_models_dir: Path) -> None:
    dual = folder(dual_models_dir, "dual")
    assert {p.suffix for p in dual.weights} == {".safetensors", ".gguf"}
    plenty, short = 64 * 1024 * MIB, 800 * MIB
    assert choose_weights(dual, accelerator=True, free_memory_bytes=plenty).path.suffix == ".safetensors"
    assert choose_weights(dual, accelerator=False, free_memory_bytes=plenty).path.suffix == ".gguf"
    short_choice = choose_weights(dual, accelerator=True, free_memory_bytes=short)
    assert short_choice.path.suffix == ".gguf" and "free memory" in short_choice.reason
    assert (
        choose_weights(
            dual, accelerator=False, free_memory_bytes=plenty, preference="safetensors"
        ).path.suffix
        == ".safetensors"
    )


@pytest.mark.parametrize(("accelerator", "suffix"), [(False, ".gguf"), (True, ".safetensors")])
async def test_node_loads_the_chosen_format_and_generates(
    dual_models_dir: Path, accelerator: bool, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0, accelerator=accelerator)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            [image] = await engine.generate(folder(dual_models_dir, "dual"), job())
        assert engine.loaded is not None and engine.loaded.choice.path.suffix == suffix
        assert image.size == (64, 64)
        assert any(
            r.message.startswith("loading model dual (Stable Diffusion 1.x) from model")
            and suffix in r.message
            for r in caplog.records
        )
    finally:
        await engine.stop()


def rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


async def test_switching_models_frees_the_old_one(models_dir: Path, tmp_path: Path) -> None:
    """In-process (``cancel = "next_image"``): this process's memory holds one model at a time.
    A worker process per model is ``test_sd_worker``'s."""
    copy_model(models_dir, tmp_path, "other")
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image")
    try:
        before = rss()
        await engine.generate(folder(models_dir), job())
        one_model = rss()
        loaded_cost = one_model - before
        assert loaded_cost > 400 * MIB  # the 852 MiB checkpoint is really in memory
        readings = []
        for name, models in (("other", tmp_path), (DEMO_MODEL, models_dir), ("other", tmp_path)):
            await engine.generate(folder(models, name), job())
            assert engine.loaded is not None and engine.loaded.id == name
            readings.append(rss())
        # Two models resident would add another ~850 MiB; allow allocator noise only.
        for reading in readings:
            assert reading - one_model < 0.3 * loaded_cost, (before, one_model, readings)
        await engine.stop()
        assert rss() < one_model - 0.5 * loaded_cost  # unloading gives the memory back
    finally:
        await engine.stop()


async def test_idle_model_is_unloaded_and_reloaded_on_use(models_dir: Path) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0.5)
    engine.start()
    try:
        await engine.generate(folder(models_dir), job())
        assert engine.loaded is not None
        for _ in range(40):
            await asyncio.sleep(0.1)
            if engine.loaded is None:
                break
        assert engine.loaded is None
        [image] = await engine.generate(folder(models_dir), job())  # auto-load again
        assert image.size == (64, 64) and engine.loaded is not None
    finally:
        await engine.stop()


async def test_a_folder_that_cannot_load_is_a_503_remembered_until_its_files_change(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The weights turn out truncated after the scan: 503 ``model_load_failed`` with the reason,
    logged once; the next request gets the same answer at once (no new load); when the file is
    fixed, the next request loads it."""
    copy_model(models_dir, tmp_path, "broken")
    broken = folder(tmp_path, "broken")
    weights = tmp_path / "broken" / "model.safetensors"
    good = models_dir / DEMO_MODEL / "model.safetensors"
    weights.unlink()
    weights.write_bytes(good.open("rb").read(4 * MIB))  # truncated checkpoint
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            for _ in range(2):
                with pytest.raises(OpenAIError) as failed:
                    await engine.generate(broken, job())
                error = failed.value
                assert (error.status, error.code, error.type) == (503, "model_load_failed", "server_error")
                assert "'broken'" in error.message and "model.safetensors is truncated" in error.message
        assert caplog.text.count("loading model broken") == 1  # the second request did not retry
        assert caplog.text.count("model broken cannot be loaded") == 1
        [image] = await engine.generate(folder(models_dir), job())  # the engine serves on
        assert image.size == (64, 64)
        weights.unlink()
        weights.hardlink_to(good)  # fixed: its files changed
        [image] = await engine.generate(broken, job())
        assert image.size == (64, 64) and engine.loaded is not None and engine.loaded.id == "broken"
    finally:
        await engine.stop()


async def test_a_failed_load_is_retried_after_the_backoff(models_dir: Path, tmp_path: Path) -> None:
    copy_model(models_dir, tmp_path, "broken")
    broken = folder(tmp_path, "broken")
    weights = tmp_path / "broken" / "model.safetensors"
    weights.unlink()
    weights.write_bytes(b"\x00" * 64)
    engine = SDEngine(threads=2, idle_unload_s=0, load_retry_s=0.2)
    try:
        tried_at = []
        for _ in range(2):
            with pytest.raises(OpenAIError):
                await engine.generate(broken, job())
            tried_at.append(engine._load_failures[broken.id].at)
            await asyncio.sleep(0.3)
        assert tried_at[1] > tried_at[0]  # tried again, failed again
    finally:
        await engine.stop()


@pytest.mark.parametrize("cancel", ["now", "next_image"])
async def test_a_file_stable_diffusion_cpp_refuses_is_a_503_with_its_reason(
    cancel: CancelMode, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A complete safetensors file whose tensors are not a model (the scan would not serve it;
    here the folder is built by hand): sd.cpp itself refuses it (the binding would crash freeing
    the NULL context; the engine must not), and its own error line is the reason given, from the
    worker process (``now``) as in-process. The next request gets the same answer without a new
    load (no new worker)."""
    import numpy as np
    from safetensors.numpy import save_file

    bad = tmp_path / "notamodel"
    bad.mkdir()
    weights = bad / "model.safetensors"
    save_file({"unrelated.weight": np.zeros((4, 4), dtype=np.float16)}, str(weights))
    refused = ModelFolder(
        id="notamodel",
        path=bad,
        profile=ModelProfile(),
        weights=(weights,),
        weights_args={weights: "model_path"},
    )
    engine = SDEngine(threads=2, idle_unload_s=0, cancel=cancel)
    try:
        with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
            for _ in range(2):
                with pytest.raises(OpenAIError) as failed:
                    await engine.generate(refused, job())
                error = failed.value
                assert error.status == 503 and error.code == "model_load_failed"
                assert "stable-diffusion.cpp refused model.safetensors" in error.message
                assert "get sd version from file failed" in error.message  # sd.cpp's own error line
                assert str(tmp_path) not in error.message  # files by name: no node paths for clients
                assert engine.runner.pid() is None  # no worker left behind
        assert caplog.text.count("loading model notamodel") == 1
        assert caplog.text.count("model notamodel cannot be loaded") == 1
        [image] = await engine.generate(folder(models_dir), job())
        assert image.size == (64, 64)
    finally:
        await engine.stop()


class Recorder:
    """A job listener that keeps what it hears (frames on the worker thread)."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int, int, tuple[int, int]]] = []

    def partial(self, image_index: int, partial_index: int, frame: Image.Image) -> None:
        assert threading.current_thread().name.startswith("sd-engine")
        self.heard.append(("partial", image_index, partial_index, frame.size))

    def completed(self, image_index: int, image: Image.Image) -> None:
        self.heard.append(("completed", image_index, -1, image.size))


async def test_previews_of_the_chosen_steps_and_progress_while_a_job_runs(models_dir: Path) -> None:
    engine = SDEngine(threads=2, idle_unload_s=0)
    recorder = Recorder()
    try:
        two = job(sample_steps=3, images=2, partial_images=2, preview_method="proj", listener=recorder)
        running = asyncio.create_task(engine.generate(folder(models_dir), two))
        seen: list[JobProgress] = []
        while not running.done():
            seen.extend(engine.jobs())
            await asyncio.sleep(0.05)
        images = await running
        assert engine.jobs() == []
        assert recorder.heard == [
            ("partial", 0, 0, (8, 8)),  # proj: latent-sized
            ("partial", 0, 1, (8, 8)),
            ("completed", 0, -1, (64, 64)),
            ("partial", 1, 0, (8, 8)),
            ("partial", 1, 1, (8, 8)),
            ("completed", 1, -1, (64, 64)),
        ]
        assert len(images) == 2
        assert {p.model for p in seen} == {DEMO_MODEL} and {p.images for p in seen} == {2}
        assert {p.image for p in seen} == {1, 2}
        assert {p.steps for p in seen} == {3} and max(p.step for p in seen) >= 2
        assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(seen))
    finally:
        await engine.stop()


CALLBACKS_SCRIPT = """
import asyncio, sys
from pathlib import Path
import llmlb_node.stable_diffusion.engine.sdcpp_calls as sdcpp_calls
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.models.model_folder import scan_models
from tests.system.test_sd_engine import Recorder, job

if sys.argv[3] == "no-clearing":
    sdcpp_calls.clear_callbacks = lambda: None

async def main():
    demo, other = ({f.id: f for f in scan_models(Path(p)).models} for p in sys.argv[1:3])
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image")
    recorder = Recorder()
    previewed = job(sample_steps=2, partial_images=1, preview_method="proj", listener=recorder)
    await engine.generate(demo["demo"], previewed)
    print("previews", len(recorder.heard), flush=True)
    await engine.generate(demo["demo"], job())
    print("plain call", flush=True)
    await engine.generate(other["other"], job())
    print("load and call", flush=True)
    await engine.stop()

asyncio.run(main())
"""


@pytest.mark.parametrize("clearing", ["clearing", "no-clearing"])
def test_callbacks_are_cleared_after_every_call(models_dir: Path, tmp_path: Path, clearing: str) -> None:
    """A call with preview and progress callbacks, then a call without them, then a load: fine
    when the engine clears both process-wide callbacks after each call; without that the process
    dies (the control run shows the test can fail). In a child process: a crash is its exit; the
    engine in-process (``cancel = "next_image"``), where the patch reaches sd.cpp's calls."""
    copy_model(models_dir, tmp_path, "other")
    done = subprocess.run(
        [sys.executable, "-c", CALLBACKS_SCRIPT, str(models_dir), str(tmp_path), clearing],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if clearing == "clearing":
        assert done.returncode == 0, done.stderr[-3000:]
        assert "previews 2" in done.stdout and "load and call" in done.stdout
    else:
        assert done.returncode < 0 and "load and call" not in done.stdout  # killed by a signal


async def test_engine_options_reach_stable_diffusion_cpp(models_dir: Path) -> None:
    """guidance, flow_shift, vae_tiling and the LoRA tags the node builds are passed on (a spy
    around the real binding call, which still runs, in-process); unset guidance/flow_shift are
    not passed. A worker process gets the same arguments (``GenerateArgs.kwargs``)."""
    engine = SDEngine(threads=2, idle_unload_s=0, cancel="next_image")
    calls: list[dict[str, object]] = []
    try:
        await engine.generate(folder(models_dir), job())
        assert isinstance(engine.runner, InProcessRunner)
        context = engine.runner.context
        real = context.generate_image

        def spy(**kwargs: object) -> object:
            calls.append(kwargs)
            return real(**kwargs)

        context.generate_image = spy
        await engine.generate(folder(models_dir), job())
        await engine.generate(folder(models_dir), job(guidance=2.5, flow_shift=3.0, vae_tiling=True))
        plain, tuned = calls
        assert "guidance" not in plain and "flow_shift" not in plain and "cache_mode" not in plain
        assert (tuned["guidance"], tuned["flow_shift"], tuned["vae_tiling"]) == (2.5, 3.0, True)
        assert plain["prompt"] == "a cat"
    finally:
        await engine.stop()


@pytest.mark.parametrize(
    "prompt",
    [
        "<lora:known:0.5> a cat",
        "a cat <lora:known:1> <lora",
        "a cat<lora:known:0.5>>:1>",
        "<lora:known:1>:/etc/passwd:1> <lora:known",
        "<lora<lora:known:1>:x",
    ],
)
def test_the_binding_parses_only_the_tags_the_node_built(prompt: str, tmp_path: Path) -> None:
    """The binding's own parser (``_extract_and_build_loras``, which would open any path) run on
    the prompt the engine passes: it finds exactly the node's tag, with the known file's
    absolute path, and the client's text without tags."""
    from stable_diffusion_cpp import StableDiffusion

    known = tmp_path / "known.safetensors"
    known.write_bytes(b"not opened here")
    plan = plan_loras(
        prompt=prompt,
        negative_prompt="",
        requested=None,
        available={"known": known},
        supported=True,
        model="m",
        family_label="test",
    )
    built = prompt_with_loras(plan.prompt, plan.loras)
    text, loras, count, _buffers = StableDiffusion._extract_and_build_loras(None, built, str(tmp_path / "x"))
    assert count == 1 and loras[0].path.decode() == str(known.resolve())
    assert text == plan.prompt  # the client's text, as the node left it
