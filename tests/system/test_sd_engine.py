"""The StableDiffusion engine in-process on the synthetic checkpoint: mask polarity, weights
format choice, loading on first use, unloading when idle, freeing memory on model switch,
and load failures that surface as OpenAI-shaped 500s without breaking the engine."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import psutil
import pytest
from PIL import Image

from llmlb_core.errors import OpenAIError
from llmlb_node.stable_diffusion.engine import EngineJob, SDEngine
from llmlb_node.stable_diffusion.model_folder import ModelFolder, choose_weights, scan_models
from llmlb_node.stable_diffusion.quantize import quantize
from tests.support.images_util import gradient, mean_abs_diff
from tests.support.models import DEMO_MODEL, MODEL_CACHE, copy_model

MIB = 1024 * 1024


def job(**overrides: object) -> EngineJob:
    base = dict(
        prompt="a cat",
        negative_prompt="",
        width=64,
        height=64,
        steps=1,
        cfg_scale=1.0,
        sampler="euler",
        scheduler=None,
        seed=5,
        batch_count=1,
    )
    base.update(overrides)
    return EngineJob(**base)  # type: ignore[arg-type]


def folder(models_dir: Path, name: str = DEMO_MODEL) -> ModelFolder:
    return {f.id: f for f in scan_models(models_dir)}[name]


@pytest.fixture(scope="session")
def dual_models_dir(models_dir: Path) -> Path:
    """A model folder holding the demo weights as safetensors and as q8_0 GGUF."""
    root = MODEL_CACHE.parent / "dual-models"
    target = root / "dual"
    gguf = target / "model-q8_0.gguf"
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
                folder(models_dir), job(init_image=init, mask_image=mask, strength=0.9, steps=2)
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
            "loading model dual from model" in r.message and suffix in r.message for r in caplog.records
        )
    finally:
        await engine.stop()


def rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


async def test_switching_models_frees_the_old_one(models_dir: Path, tmp_path: Path) -> None:
    copy_model(models_dir, tmp_path, "other")
    engine = SDEngine(threads=2, idle_unload_s=0)
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


async def test_broken_weights_give_500_and_engine_keeps_serving(models_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (models_dir / DEMO_MODEL / "model.safetensors").open("rb").read(4 * MIB)
    (broken / "model.safetensors").write_bytes(data)  # truncated checkpoint
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        with pytest.raises(OpenAIError) as failed:
            await engine.generate(folder(tmp_path, "broken"), job())
        assert failed.value.status == 500 and failed.value.code == "model_load_failed"
        assert "broken" in failed.value.message
        [image] = await engine.generate(folder(models_dir), job())
        assert image.size == (64, 64)
    finally:
        await engine.stop()


async def test_loader_failure_inside_stable_diffusion_cpp_is_a_500(models_dir: Path, tmp_path: Path) -> None:
    """A complete safetensors file whose tensors are not a model: sd.cpp itself refuses it
    (the binding would crash freeing the NULL context; the engine must not)."""
    import numpy as np
    from safetensors.numpy import save_file

    bad = tmp_path / "notamodel"
    bad.mkdir()
    save_file({"unrelated.weight": np.zeros((4, 4), dtype=np.float16)}, str(bad / "model.safetensors"))
    engine = SDEngine(threads=2, idle_unload_s=0)
    try:
        with pytest.raises(OpenAIError) as failed:
            await engine.generate(folder(tmp_path, "notamodel"), job())
        assert failed.value.status == 500 and failed.value.code == "model_load_failed"
        [image] = await engine.generate(folder(models_dir), job())
        assert image.size == (64, 64)
    finally:
        await engine.stop()
