"""Helpers for image tests: decode responses, build uploads, compare pixels."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageChops, ImageStat


def decode_b64(b64: str | None) -> Image.Image:
    assert b64, "expected b64_json"
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth colour gradient: a recognisable init image."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(int(255 * x / width), int(255 * y / height), 128) for y in range(height) for x in range(width)]
    )
    return image


def alpha_mask(width: int, height: int, edit_box: tuple[int, int, int, int]) -> Image.Image:
    """OpenAI-style mask: opaque everywhere except ``edit_box`` (alpha 0 = edit here)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), edit_box)
    return mask


def mean_abs_diff(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int] | None = None) -> float:
    a, b = a.convert("RGB"), b.convert("RGB")
    if box is not None:
        a, b = a.crop(box), b.crop(box)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3
