"""Multipart uploads for edits and variations: streamed parsing with limits.

The body is parsed as it streams in (``multipart.PushMultipartParser``, the parser Litestar
itself depends on); a file part is refused the moment it passes ``max_file_bytes``, so an
oversized upload is never read whole into memory. A body over ``max_total_bytes`` is a 413.
What the image files hold is checked in ``llmlb_plugins.images.decoding``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import multipart
from litestar import Request

from llmlb_core.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")

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


def too_large_file(name: str, limit: int) -> OpenAIError:
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
                            raise too_large_file(current.name, max_file_bytes)
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


# What part names, file names and content types of a node request may be made of: no quote,
# no CR/LF, no ``;``. The router chooses them (``image-0.png``, ``mask.png``), never the client.
_HEADER_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/+-[]")


def _header_token(value: str) -> str:
    if not 0 < len(value) <= 128 or not _HEADER_TOKEN_CHARS.issuperset(value):
        raise ValueError(f"not a safe multipart header value: {value!r}")
    return value


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """Build a multipart/form-data body: ``files`` items are (field, filename, data, type).

    Names, file names and content types go into part headers, so each must be a plain token
    (a ``ValueError`` otherwise: the caller chose it). Values and file data are part bodies,
    and the random boundary is one that none of them contains.
    """
    values = {_header_token(name): value.encode() for name, value in fields.items()}
    for name, filename, _, content_type in files:
        for token in (name, filename, content_type):
            _header_token(token)
    boundary = f"llmlb-{secrets.token_hex(16)}"
    while any(boundary.encode() in data for data in (*values.values(), *(f[2] for f in files))):
        boundary = f"llmlb-{secrets.token_hex(16)}"
    lines: list[bytes] = []
    for name, value in values.items():
        lines.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
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
