"""Uploaded images for edits and variations: checked and decoded within bounds, off the event loop.

Shared by the router (``routes``), which only checks uploads before sending them on, and the
node's stable_diffusion runtime, which needs the pixels of the first image and of the mask. The
form itself is read by ``llmlb_core.api.parse_multipart``; this module judges its files.

- Images are recognised by content, not by name or MIME type: PNG, JPEG and WebP only.
- Every step that parses image data runs on the decoder's own worker threads (as many as
  ``decodes_at_once``, behind a semaphore of that size), never on the event loop.
- First the headers of every image and the mask are read: format, size (per-image pixel limit,
  decompression bombs) and alpha. The pixels of all of them together must fit the per-request
  budget before anything is decoded.
- Then each file is checked or decoded, one job per image. The router needs no pixels, only to
  refuse corrupt or truncated files with a 400: a PNG's image data is inflated in 1 MiB pieces
  and checked row by row (``png_check``), a JPEG is decoded at 1/8 scale (the same entropy
  decoding, 1/64 of the memory), a WebP is decoded and dropped at once. The node decodes the
  first image and the mask, which it uses, on the worker thread.
- OpenAI's mask: an image of the edited image's size whose fully transparent pixels (alpha = 0)
  mark the area to edit; the node converts it to greyscale, 255 marking "regenerate".
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from PIL import Image, UnidentifiedImageError

from llmlb_core.api import OpenAIError, ParsedForm, Upload, file_too_large
from llmlb_plugins.images.png_check import check_png_data
from llmlb_plugins.images.protocol import MAX_EDIT_IMAGES

T = TypeVar("T")

SUPPORTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
SUPPORTED_LIST = "png, jpeg, webp"
# The file parts that carry images (the SDK sends "image[]" for a list).
IMAGE_FIELDS = ("image", "image[]")
# Most image[] parts accepted by /v1/images/edits (OpenAI's limit). Memory stays bounded by the
# other limits: each file by max_upload_bytes, the body by (MAX_IMAGES + 1) files, and the pixels
# of all of them together by max_request_pixels, read from their headers before any decoding.
MAX_IMAGES = MAX_EDIT_IMAGES
# JPEGs are checked at this fraction of their size (libjpeg decodes every block either way).
JPEG_CHECK_SCALE = 8


class UploadLimitSettings(Protocol):
    """What the router's `[plugin.images]` and the node's `[runtime.stable_diffusion]` settings
    both hold: the upload limits (the node's should be at least the router's)."""

    @property
    def max_upload_bytes(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def max_request_pixels(self) -> int: ...
    @property
    def max_concurrent_decodes(self) -> int: ...


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int  # one file
    max_pixels: int  # one image
    max_request_pixels: int  # all images and the mask of one request, together
    decodes_at_once: int

    @classmethod
    def of(cls, cfg: UploadLimitSettings) -> ImageLimits:
        return cls(
            max_bytes=cfg.max_upload_bytes,
            max_pixels=cfg.max_pixels,
            max_request_pixels=cfg.max_request_pixels,
            decodes_at_once=cfg.max_concurrent_decodes,
        )


@dataclass(frozen=True)
class CheckedImage:
    """An upload whose header was read: what it is, without its pixels."""

    upload: Upload
    param: str  # "image" or "mask": the field errors name
    format: str  # png, jpeg or webp
    size: tuple[int, int]
    has_alpha: bool

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def media_type(self) -> str:
        return f"image/{self.format}"


@dataclass(frozen=True)
class EditInputs:
    """The checked uploads of one request; ``init`` and ``mask_pixels`` only when decoded for the node."""

    images: list[CheckedImage]
    mask: CheckedImage | None
    init: Image.Image | None = None
    mask_pixels: Image.Image | None = None  # greyscale, 255: regenerate here


@contextmanager
def _image_errors(param: str) -> Iterator[None]:
    """Pillow's errors for a file as OpenAI 400s naming ``param``."""
    try:
        yield
    except OpenAIError:
        raise
    except Image.DecompressionBombError as exc:
        raise OpenAIError(
            400, f"'{param}' decompresses to too many pixels: {exc}", param=param, code="image_too_large"
        ) from None
    except UnidentifiedImageError:
        raise OpenAIError(
            400,
            f"'{param}' is not a recognised image. Supported formats: {SUPPORTED_LIST}",
            param=param,
            code="unsupported_image_format",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise OpenAIError(
            400, f"'{param}' is corrupt or truncated: {exc}", param=param, code="invalid_image"
        ) from None


def read_header(upload: Upload, param: str, limits: ImageLimits) -> CheckedImage:
    """Format, size and alpha of an upload from its header (nothing decoded), with the file limits."""
    if len(upload.data) > limits.max_bytes:
        raise file_too_large(param, limits.max_bytes, label="Image")
    if not upload.data:
        raise OpenAIError(400, f"'{param}' is an empty file", param=param, code="invalid_image")
    with _image_errors(param), Image.open(io.BytesIO(upload.data)) as image:
        fmt = SUPPORTED_FORMATS.get(image.format or "")
        if fmt is None:
            raise OpenAIError(
                400,
                f"Unsupported image format '{(image.format or 'unknown').lower()}' for '{param}'. "
                f"Supported formats: {SUPPORTED_LIST}",
                param=param,
                code="unsupported_image_format",
            )
        width, height = image.size
        if width * height > limits.max_pixels:
            raise OpenAIError(
                400,
                f"'{param}' is {width}x{height} = {width * height:,} pixels; "
                f"the limit is {limits.max_pixels:,}",
                param=param,
                code="image_too_large",
            )
        has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
        return CheckedImage(upload, param, fmt, (width, height), has_alpha)


def verify(checked: CheckedImage) -> None:
    """Refuse a corrupt or truncated file without keeping its pixels (see the module docstring)."""
    if checked.format == "png":
        with _image_errors(checked.param):
            check_png_data(checked.upload.data)
        return
    with _image_errors(checked.param), Image.open(io.BytesIO(checked.upload.data)) as image:
        if checked.format == "jpeg":
            width, height = checked.size
            image.draft(image.mode, (max(1, width // JPEG_CHECK_SCALE), max(1, height // JPEG_CHECK_SCALE)))
        image.load()


def decode(checked: CheckedImage) -> Image.Image:
    """The decoded image."""
    with _image_errors(checked.param):
        image = Image.open(io.BytesIO(checked.upload.data))
        image.load()
        return image


def decode_mask(checked: CheckedImage) -> Image.Image:
    """OpenAI mask (alpha = 0: edit here) to a greyscale mask (255: regenerate here)."""
    with decode(checked) as mask:
        alpha = mask.getchannel("A") if mask.mode in ("RGBA", "LA") else mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0)


def check_mask(mask: CheckedImage, image: CheckedImage) -> None:
    if mask.size != image.size:
        raise OpenAIError(
            400,
            f"mask is {mask.size[0]}x{mask.size[1]} but image is {image.size[0]}x{image.size[1]}; "
            "they must be the same size",
            param="mask",
            code="mask_size_mismatch",
        )
    if not mask.has_alpha:
        raise OpenAIError(
            400,
            "mask must be a PNG with an alpha channel; fully transparent pixels mark the area to edit",
            param="mask",
            code="mask_without_alpha",
        )


def _chosen_uploads(form: ParsedForm, *, max_images: int, mask_allowed: bool) -> list[tuple[Upload, str]]:
    """The image parts (at least one, at most ``max_images``) and at most one mask, with their params."""
    images = form.uploads(*IMAGE_FIELDS)
    if not images:
        raise OpenAIError(
            400,
            "image is required (a file part named 'image' or 'image[]')",
            param="image",
            code="missing_image",
        )
    if len(images) > max_images:
        raise OpenAIError(
            400, f"At most {max_images} image(s) per request", param="image", code="too_many_images"
        )
    masks = form.uploads("mask") if mask_allowed else []
    if len(masks) > 1:
        raise OpenAIError(400, f"One mask per request, not {len(masks)}", param="mask", code="duplicate_mask")
    return [(u, "image") for u in images] + [(m, "mask") for m in masks]


class ImageDecoder:
    """Reads a request's image uploads within ``limits`` on a small pool of worker threads."""

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.decodes_at_once)
        self._pool = ThreadPoolExecutor(limits.decodes_at_once, thread_name_prefix="llmlb-image")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _headers(self, chosen: list[tuple[Upload, str]]) -> list[CheckedImage]:
        return [read_header(upload, param, self.limits) for upload, param in chosen]

    async def read(
        self, form: ParsedForm, *, max_images: int, mask_allowed: bool, keep_pixels: bool
    ) -> EditInputs:
        """Check the uploads of ``form``; ``keep_pixels`` (the node): decode the first image and
        the mask for generation (the other images are not used, so only their headers are read);
        otherwise (the router) decode everything once to check it, keeping nothing."""
        chosen = _chosen_uploads(form, max_images=max_images, mask_allowed=mask_allowed)
        checked = await self._run(self._headers, chosen)
        total = sum(c.pixels for c in checked)
        if total > self.limits.max_request_pixels:
            raise OpenAIError(
                400,
                f"The images of this request have {total:,} pixels together; the limit is "
                f"{self.limits.max_request_pixels:,} per request (max_request_pixels)",
                param="image",
                code="too_many_pixels",
            )
        images = [c for c in checked if c.param == "image"]
        mask = next((c for c in checked if c.param == "mask"), None)
        if mask is not None:
            check_mask(mask, images[0])
        if not keep_pixels:
            for item in checked:
                await self._run(verify, item)
            return EditInputs(images, mask)
        init = await self._run(decode, images[0])
        mask_pixels = await self._run(decode_mask, mask) if mask is not None else None
        return EditInputs(images, mask, init=init, mask_pixels=mask_pixels)
