"""Multipart uploads for edits and variations: streamed parsing with limits, image checks.

- The body is parsed as it streams in (``multipart.PushMultipartParser``, the parser Litestar
  itself depends on); a file part is refused the moment it passes ``max_file_bytes``, so an
  oversized upload is never read whole into memory. A body over ``max_total_bytes`` is a 413.
- Images are recognised by content, not by name or MIME type: PNG, JPEG and WebP only.
- The pixel count is checked from the header before decoding (decompression bombs), then the
  image is fully decoded so corrupt or truncated files are refused with a 400.
- OpenAI's mask: a PNG of the image's size whose fully transparent pixels (alpha = 0) mark the
  area to edit. It is converted to a greyscale mask where 255 marks "regenerate".
"""

from __future__ import annotations

import io
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import multipart
from litestar import Request
from PIL import Image

from llmlb_core.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")

SUPPORTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
SUPPORTED_LIST = "png, jpeg, webp"
IMAGE_FIELDS = ("image", "image[]")
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32


@dataclass
class Upload:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)

    def uploads(self, *names: str) -> list[Upload]:
        return [f for f in self.files if f.field in names]


def _boundary(content_type: str) -> str:
    media_type, options = multipart.parse_options_header(content_type)
    if media_type != "multipart/form-data" or not options.get("boundary"):
        raise OpenAIError(
            400,
            "This endpoint takes multipart/form-data (as the OpenAI SDK sends it)",
            code="invalid_content_type",
        )
    return options["boundary"]


def _too_large_file(name: str, limit: int) -> OpenAIError:
    return OpenAIError(
        400,
        f"Image file exceeds maximum size of {limit // (1024 * 1024)}MB",
        param=name.removesuffix("[]"),
        code="file_too_large",
    )


async def parse_multipart(
    request: Request[Any, Any, Any], *, max_file_bytes: int, max_total_bytes: int
) -> ParsedForm:
    boundary = _boundary(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total_bytes:
        raise OpenAIError(413, f"Request body exceeds {max_total_bytes // (1024 * 1024)}MB")
    form = ParsedForm()
    total = 0
    current: multipart.MultipartSegment | None = None
    chunks: list[bytes] = []
    size = 0
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_total_bytes:
                    raise OpenAIError(413, f"Request body exceeds {max_total_bytes // (1024 * 1024)}MB")
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        current, chunks, size = event, [], 0
                    elif event:
                        assert current is not None
                        size += len(event)
                        if current.filename is not None and size > max_file_bytes:
                            raise _too_large_file(current.name, max_file_bytes)
                        if current.filename is None and size > MAX_FIELD_BYTES:
                            raise OpenAIError(
                                400, f"Form field '{current.name}' is too long", param=current.name
                            )
                        chunks.append(event)
                    elif current is not None:
                        data = b"".join(chunks)
                        if current.filename is not None:
                            form.files.append(
                                Upload(current.name, current.filename, current.content_type, data)
                            )
                        else:
                            form.fields[current.name] = data.decode("utf-8", "replace")
                        current = None
            for _ in parser.parse(b""):
                pass
    except multipart.ParserLimitReached as exc:
        raise OpenAIError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    except multipart.MultipartError as exc:
        raise OpenAIError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    return form


def convert_fields(fields: dict[str, str], type_: type[T]) -> T:
    """Plain form fields to a typed struct ("2" becomes 2; "two" is a 400 naming the field)."""
    try:
        return msgspec.convert(fields, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise from_msgspec_error(exc) from None


def open_image(upload: Upload, *, param: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an uploaded image with every check; returns a fully loaded image."""
    if len(upload.data) > max_bytes:
        raise _too_large_file(param, max_bytes)
    if not upload.data:
        raise OpenAIError(400, f"'{param}' is an empty file", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(upload.data))
            fmt = image.format
            if fmt not in SUPPORTED_FORMATS:
                raise OpenAIError(
                    400,
                    f"Unsupported image format '{(fmt or 'unknown').lower()}' for '{param}'. "
                    f"Supported formats: {SUPPORTED_LIST}",
                    param=param,
                    code="unsupported_image_format",
                )
            width, height = image.size
            if width * height > max_pixels:
                raise OpenAIError(
                    400,
                    f"'{param}' is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
                    param=param,
                    code="image_too_large",
                )
            image.load()
    except OpenAIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OpenAIError(
            400, f"'{param}' decompresses to too many pixels: {exc}", param=param, code="image_too_large"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if "cannot identify image file" in str(exc):
            raise OpenAIError(
                400,
                f"'{param}' is not a recognised image. Supported formats: {SUPPORTED_LIST}",
                param=param,
                code="unsupported_image_format",
            ) from None
        raise OpenAIError(
            400, f"'{param}' is corrupt or truncated: {exc}", param=param, code="invalid_image"
        ) from None
    return image


def image_format(image: Image.Image) -> str:
    return SUPPORTED_FORMATS[image.format or "PNG"]


def mask_from_alpha(mask: Image.Image, image_size: tuple[int, int]) -> Image.Image:
    """OpenAI mask (alpha = 0: edit here) to a greyscale mask (255: regenerate here)."""
    if mask.size != image_size:
        raise OpenAIError(
            400,
            f"mask is {mask.size[0]}x{mask.size[1]} but image is {image_size[0]}x{image_size[1]}; "
            "they must be the same size",
            param="mask",
            code="mask_size_mismatch",
        )
    if "A" not in mask.getbands() and not (mask.mode == "P" and "transparency" in mask.info):
        raise OpenAIError(
            400,
            "mask must be a PNG with an alpha channel; fully transparent pixels mark the area to edit",
            param="mask",
            code="mask_without_alpha",
        )
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0)


def reencode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """Build a multipart/form-data body: ``files`` items are (field, filename, data, type)."""
    boundary = f"llmlb-{secrets.token_hex(16)}"
    lines: list[bytes] = []
    for name, value in fields.items():
        lines.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, data, content_type in files:
        lines.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    lines.append(f"--{boundary}--\r\n".encode())
    return b"".join(lines), f"multipart/form-data; boundary={boundary}"
