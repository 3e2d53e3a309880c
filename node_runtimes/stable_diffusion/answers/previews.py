"""Partial images: which steps to preview and how a preview frame becomes an image to send.

stable-diffusion.cpp calls the preview callback once per sampling step (``preview_interval`` is
ignored by its sampler), so the engine picks the steps it forwards: for ``k`` partial images of a
run of ``n`` steps, steps ``round(i * n / (k + 1))`` for ``i = 1..k``, without duplicates and
never step 0 or the last step (the completed image follows it). A run with too few steps gives
fewer partial images. ``n`` is the number of steps the sampler really runs, which the progress
callback reports first (an img2img run samples fewer steps than asked).

Preview methods (``preview_method`` of the model profile or the node): ``proj`` projects the
latent to colours (free, latent-sized: 8x8 for 64x64), ``tae`` decodes with the TAESD file
(about 0.1 s per step at 64x64), ``vae`` with the full VAE (about 0.7 s per step). ``auto``
is ``tae`` when the model has a TAESD file, else ``proj``; ``none`` sends no partial images. The
node's setting, when not ``auto``, holds for every model; else the model's profile decides.
"""

from __future__ import annotations

from PIL import Image


def preview_steps(steps: int, partial_images: int) -> list[int]:
    """The (1-based) steps whose previews become partial images, in order."""
    chosen: list[int] = []
    for i in range(1, partial_images + 1):
        step = round(i * steps / (partial_images + 1))
        if 1 <= step < steps and step not in chosen:
            chosen.append(step)
    return chosen


def resolve_method(*choices: str, has_taesd: bool) -> str:
    """The first choice that is not ``auto`` (node setting, then model profile), else ``auto``'s
    meaning: ``tae`` with a TAESD file, ``proj`` without."""
    for choice in choices:
        if choice != "auto":
            return choice
    return "tae" if has_taesd else "proj"


def frame_to_image(frame: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A preview frame (RGBA, latent-sized for ``proj``) as an RGB image of the requested size."""
    image = frame.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image
