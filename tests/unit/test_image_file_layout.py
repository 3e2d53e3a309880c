"""A node's image must be one file of its format and nothing else (issue 17, item 5): what Pillow
writes in every flavour passes; the bytes a hostile node would send to get a page stored under
the router's origin do not."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from llmlb_core.api import BadAnswer
from llmlb_plugins.images.answers import check_image
from llmlb_plugins.images.file_layout import check_file

HTML = b"<html><body><script>alert(document.domain)</script></body></html>"


def text_chunks() -> PngInfo:
    info = PngInfo()
    info.add_text("parameters", "a red fox")
    info.add_itxt("Comment", "ünïcode", zip=True)
    return info


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (37, 23), **options: object) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


GOOD = {
    "png": encoded("PNG"),
    "png interlaced, RGBA": encoded("PNG", "RGBA", interlace=1),
    "png with text chunks": encoded("PNG", pnginfo=text_chunks()),
    "png 1024x1024 (several IDAT chunks)": encoded("PNG", size=(1024, 1024)),
    "jpeg": encoded("JPEG"),
    "jpeg progressive, optimized": encoded("JPEG", progressive=True, optimize=True),
    "jpeg with EXIF": encoded("JPEG", exif=Image.Exif()),
    "jpeg greyscale": encoded("JPEG", "L"),
    "webp lossy": encoded("WEBP"),
    "webp lossless, RGBA": encoded("WEBP", "RGBA", lossless=True),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_what_pillow_writes_is_one_whole_file(case: str) -> None:
    fmt = case.split()[0]
    check_file(GOOD[case], fmt)
    check_image(GOOD[case], fmt)


PNG, JPEG, WEBP = GOOD["png"], GOOD["jpeg"], GOOD["webp lossy"]
BAD = {
    "a PNG signature, then HTML": ("png", PNG[:8] + HTML),
    "HTML after a PNG's IEND": ("png", PNG + HTML),
    "one byte after a PNG's IEND": ("png", PNG + b"\0"),
    "a PNG cut before its IEND": ("png", PNG[:-12]),
    "a PNG cut inside a chunk": ("png", PNG[: len(PNG) // 2]),
    "a PNG whose first chunk is not IHDR": ("png", PNG[:12] + b"tEXt" + PNG[16:]),
    "a second PNG after the first": ("png", PNG + PNG),
    "JPEG magic, then HTML": ("jpeg", JPEG[:3] + HTML),
    "HTML after a JPEG's end": ("jpeg", JPEG + HTML),
    "a JPEG cut before its end": ("jpeg", JPEG[:-2]),
    "a JPEG cut in its headers": ("jpeg", JPEG[:40]),
    "RIFF WEBP, then HTML": ("webp", b"RIFF" + len(HTML).to_bytes(4, "little") + b"WEBP" + HTML),
    "HTML after a WebP": ("webp", WEBP + HTML),
    "a WebP cut short": ("webp", WEBP[:-4]),
    "a WAV file": ("webp", b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + bytes(28)),
    "a PNG announced as JPEG": ("jpeg", PNG),
    "an unknown format": ("html", HTML),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_file_with_anything_else_in_it_is_refused(case: str) -> None:
    fmt, data = BAD[case]
    with pytest.raises(ValueError):
        check_file(data, fmt)
    with pytest.raises(BadAnswer, match="an image that is not one"):
        check_image(data, fmt)
