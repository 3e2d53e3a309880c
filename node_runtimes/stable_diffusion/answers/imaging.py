"""Pixels in and out of the engine: inputs fitted to the generation size, results encoded.

All of it is CPU work on whole images: callers run it on worker threads, off the event loop.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

from llmlb_node.stable_diffusion.answers.previews import frame_to_image


def encode_image(image: Image.Image, output_format: str, compression: int | None) -> str:
    """``image`` as base64 in ``output_format`` (png, jpeg, webp) with OpenAI's
    ``output_compression`` (0-100)."""
    out = io.BytesIO()
    if output_format == "png":
        # output_compression 0-100 maps to zlib levels 0-9 for PNG.
        level = 6 if compression is None else round(compression * 9 / 100)
        image.save(out, format="PNG", compress_level=level)
    else:
        quality = 100 - compression if compression is not None else 90
        image.convert("RGB").save(out, format=output_format.upper(), quality=max(1, quality))
    return base64.b64encode(out.getvalue()).decode("ascii")


def fit_inputs(
    init: Image.Image | None, mask: Image.Image | None, size: tuple[int, int]
) -> tuple[Image.Image | None, Image.Image | None]:
    """The init image (RGB) and mask resized to the generation size."""
    if init is not None:
        init = init.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if mask is not None:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return init, mask


@dataclass(frozen=True)
class Output:
    """How a job's images are delivered: the requested size and format, and for a masked edit
    the init image and mask (every pixel outside the mask stays as it was)."""

    size: tuple[int, int]
    output_format: str
    compression: int | None
    init: Image.Image | None = None
    mask: Image.Image | None = None

    def finish(self, image: Image.Image, *, preview: bool = False) -> Image.Image:
        if preview:
            image = frame_to_image(image, self.size)  # latent-sized for proj: scaled up
        else:
            image = image.convert("RGB")  # the binding returns RGBA
            if image.size != self.size:
                image = image.resize(self.size, Image.Resampling.LANCZOS)
        if self.init is not None and self.mask is not None:
            image = Image.composite(image, self.init, self.mask)
        return image

    def render(self, image: Image.Image, preview: bool) -> str:
        """The base64 of an image (or preview frame) as the client gets it."""
        return encode_image(self.finish(image, preview=preview), self.output_format, self.compression)
