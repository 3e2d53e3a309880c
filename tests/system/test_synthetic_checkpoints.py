"""The synthetic checkpoints the tests write themselves, run through the real binding
(stable_diffusion_cpp.StableDiffusion, in this process) with nothing of ours in between:

- the multi-file FLUX.1 folder (``flux1-schnell`` + ``clip_l`` + ``ae`` + ``taef1``, no T5, no
  model.toml) loads from its separate files and generates deterministic images;
- reference images reach it (2 references give another image than 1);
- the synthetic LoRAs (SD1 and FLUX) are applied in full by sd.cpp and measurably change the
  pixels, and sd.cpp takes them off again;
- the preview callback gives frames with proj, tae and vae previews.

Every call that passes a callback is followed by clearing sd.cpp's process-wide callbacks
(``clear_callbacks``): the next call would crash otherwise.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stable_diffusion_cpp as sdc
from PIL import Image

from llmlb_node.stable_diffusion.engine import sdcpp_log
from llmlb_node.stable_diffusion.tools.demo_flux import (
    AE_FILE,
    CLIP_L_FILE,
    DIFFUSION_FILE,
    FLUX_FILES,
    demo_flux_load_kwargs,
)
from tests.support.images_util import gradient, mean_abs_diff
from tests.support.models import DEMO_MODEL, FLUX_LORA, FLUX_MODEL, SD1_LORA

SIZE = 64
# Two different images of the same model differ by far more than this (mean absolute
# difference of 0-255 channel values); a LoRA taken off again leaves f16 rounding, far less.
CLEARLY_DIFFERENT = 1.0
ROUNDING_ONLY = 0.5


def clear_callbacks() -> None:
    low = sdc.stable_diffusion_cpp
    low.sd_set_progress_callback(None, None)
    low.sd_set_preview_callback(None, 0, 1, True, False, None)


def generate(sd: Any, prompt: str = "a lighthouse", **kwargs: Any) -> Image.Image:
    params: dict[str, Any] = dict(
        prompt=prompt, width=SIZE, height=SIZE, sample_steps=2, cfg_scale=1.0, sample_method="euler", seed=7
    )
    params.update(kwargs)
    try:
        [image] = sd.generate_image(**params)
    finally:
        clear_callbacks()
    assert image.size == (SIZE, SIZE)
    return image.convert("RGB")


@pytest.fixture(scope="module")
def flux_sd(flux_models_dir: Path, lora_dir: Path) -> Iterator[Any]:
    """The FLUX folder loaded the way a node loads a split model: diffusion model, CLIP-L and
    AE as separate files, the TAE for previews only, encoder kept for reference images."""
    sd = sdc.StableDiffusion(
        **demo_flux_load_kwargs(flux_models_dir / FLUX_MODEL),
        tae_preview_only=True,
        vae_decode_only=False,
        lora_model_dir=str(lora_dir),
        n_threads=2,
        verbose=True,  # the LoRA test reads sd.cpp's log
    )
    yield sd
    sd.close()
    gc.collect()


@pytest.fixture(scope="module")
def flux_image(flux_sd: Any) -> Image.Image:
    """The reference image: prompt "a lighthouse", seed 7, 2 steps, no LoRA, no references."""
    return generate(flux_sd)


def test_flux_folder_is_what_a_user_downloads(flux_models_dir: Path) -> None:
    from llmlb_node.stable_diffusion.tools.demo_checkpoint import whole_safetensors_header

    folder = flux_models_dir / FLUX_MODEL
    assert sorted(p.name for p in folder.iterdir()) == sorted(FLUX_FILES)  # and no model.toml
    headers = {name: whole_safetensors_header(folder / name) or {} for name in FLUX_FILES}
    dit = headers[DIFFUSION_FILE]
    assert "guidance_in.in_layer.weight" in dit and "double_blocks.1.img_attn.qkv.weight" in dit
    assert not any(name.startswith("model.diffusion_model.") for name in dit)
    assert all(name.startswith("text_model.") for name in headers[CLIP_L_FILE] if name != "__metadata__")
    assert headers[AE_FILE]["decoder.conv_in.weight"]["shape"][1] == 16  # 16 latent channels


def test_flux_split_files_generate_deterministically(flux_sd: Any, flux_image: Image.Image) -> None:
    again = generate(flux_sd)
    other_seed = generate(flux_sd, seed=8)
    assert again.tobytes() == flux_image.tobytes()
    assert mean_abs_diff(other_seed, flux_image) > CLEARLY_DIFFERENT
    assert len(flux_image.getcolors(SIZE * SIZE) or []) > 100  # an image, not a flat colour


def test_flux_two_reference_images_differ_from_one(flux_sd: Any, flux_image: Image.Image) -> None:
    first = gradient(SIZE, SIZE)
    second = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    one = generate(flux_sd, ref_images=[first])
    two = generate(flux_sd, ref_images=[first, second])
    assert mean_abs_diff(one, flux_image) > CLEARLY_DIFFERENT
    assert mean_abs_diff(two, one) > CLEARLY_DIFFERENT


def check_lora_changes_pixels(
    sd: Any, baseline: Image.Image, lora: str, caplog: pytest.LogCaptureFixture
) -> None:
    """At weight 1 sd.cpp applies every tensor of the LoRA (its log says so) and the pixels
    change; at 0.5 they change less; without it they are back (up to f16 rounding: sd.cpp
    merges LoRAs into the weights and subtracts them again).

    sd.cpp's log callback is process-wide: the node's (``sdcpp_log``, Python logging) is
    installed here whatever ran before, and its lines are read from the log records."""
    sdcpp_log.install()
    caplog.set_level(logging.DEBUG, logger=sdcpp_log.log.name)
    caplog.clear()
    with_lora = generate(sd, f"a lighthouse<lora:{lora}:1>")
    log = "\n".join(r.getMessage() for r in caplog.records if r.name == sdcpp_log.log.name)
    half = generate(sd, f"a lighthouse<lora:{lora}:0.5>")
    without_again = generate(sd)
    applied = [line for line in log.splitlines() if "LoRA tensors have been applied" in line]
    assert applied, log[-3000:]
    count = applied[-1].split("(", 1)[1].split(")", 1)[0]  # "(N / N)"
    done, total = (int(x) for x in count.split("/"))
    assert done == total > 0, applied[-1]
    assert "unused lora tensor" not in log
    assert mean_abs_diff(with_lora, baseline) > CLEARLY_DIFFERENT
    assert mean_abs_diff(without_again, baseline) < ROUNDING_ONLY  # sd.cpp took it off
    assert ROUNDING_ONLY < mean_abs_diff(half, baseline) < mean_abs_diff(with_lora, baseline)


def test_flux_lora_changes_pixels(
    flux_sd: Any, flux_image: Image.Image, caplog: pytest.LogCaptureFixture
) -> None:
    check_lora_changes_pixels(flux_sd, flux_image, FLUX_LORA, caplog)


def test_sd1_lora_changes_pixels(models_dir: Path, lora_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = models_dir / DEMO_MODEL
    sd = sdc.StableDiffusion(
        model_path=str(folder / "model.safetensors"),
        taesd_path=str(folder / "taesd.safetensors"),
        lora_model_dir=str(lora_dir),
        n_threads=2,
        verbose=True,
    )
    try:
        check_lora_changes_pixels(sd, generate(sd), SD1_LORA, caplog)
    finally:
        sd.close()
        gc.collect()


@pytest.mark.parametrize(("method", "frame_size"), [("proj", SIZE // 8), ("tae", SIZE), ("vae", SIZE)])
def test_flux_preview_frames(flux_sd: Any, method: str, frame_size: int) -> None:
    """One frame per step: latent-sized with proj, full-sized with tae and vae. Previews do not
    change the final image (compared with a run after it: a LoRA test before may have left
    f16 rounding in the weights). sd.cpp 0.4.7 draws tae and vae previews alike: with the
    preview TAE when the context has one (as here), else with the VAE."""
    frames: list[tuple[int, tuple[int, int], bool]] = []

    def on_preview(step: int, images: list[Image.Image], is_noisy: bool) -> None:
        frames.extend((step, image.size, is_noisy) for image in images)

    final = generate(flux_sd, preview_method=method, preview_callback=on_preview)
    without_previews = generate(flux_sd)  # the callbacks were cleared: a call without them runs
    assert [(step, size) for step, size, _ in frames] == [(1, (frame_size,) * 2), (2, (frame_size,) * 2)]
    assert final.tobytes() == without_previews.tobytes()
