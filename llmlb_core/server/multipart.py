"""The one ``multipart/form-data`` toolkit: uploads read whole (buffered) or relayed as they arrive.

Two modes share one reader (:class:`_FormReader`: the streaming parser, the limits, the field
rules) and one rule for what is too large:

- **Buffered** (:func:`parse_multipart`): the whole form is read into a :class:`ParsedForm`
  (fields and :class:`Upload` files). For a route that must look at the files before it can
  send anything (images checks every image, then re-encodes the form with
  :func:`encode_multipart` under part names and file names of its own, so nothing the client
  put in a part header reaches a node), and for the node that receives that form.
- **Relay** (:class:`MultipartRelay`): the form is parsed in passing while the client's exact
  bytes go on to the backend (audio: a 25 MB upload is never held whole). The backend parses
  those same bytes with its own parser, so this mode is strict (see below).

Limits, the same in both modes, checked on every chunk as it arrives, so an oversized body is
never read whole: a file part over ``max_file_bytes`` is a **413** ``file_too_large`` naming the
field; a body over ``max_total_bytes`` (declared in ``Content-Length`` or counted) is a **413**
``request_too_large``; a plain field over 64 KB, more than 64 parts, a field sent twice (but
one whose name holds ``[]``: ``name[]``, ``loras[][name]``), a field that is not UTF-8 or a
malformed or incomplete body is a 400 ``invalid_multipart``. :func:`convert_fields` turns the
plain fields into a typed struct (``"0.2"`` is a float; ``"hot"`` is a 400 naming the field).

Strict part headers (relay mode, :func:`check_part_headers`): the router accepts only a body
that every parser reads the same way (cpp-httplib in whisper.cpp, python-multipart in FastAPI
servers, ...): a plain boundary; per part, one ``Content-Disposition: form-data;
name="..."[; filename="..."]`` and at most one ``Content-Type``, nothing else; a file name on the
file part and on no other; no control character, backslash or (percent-encoded) quote or line
break in a name or file name, which parsers unquote differently; no folded header line. Anything
else is a 400 before any byte reaches a node, so a hostile file name cannot make the backend see
another field, another file or another model.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import multipart
from litestar import Request

from llmlb_core.server.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")

MB = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 64

# RFC 2046 boundary characters (a space only inside).
_BCHARS = "-0-9A-Za-z'()+_,./:=?"
_BOUNDARY = re.compile(rf"[{_BCHARS}](?:[{_BCHARS} ]{{0,68}}[{_BCHARS}])?")
# A part's Content-Disposition as every parser reads it alike. The file name may hold anything
# printable but a quote, a backslash or a percent-encoded quote or line break (checked apart).
_DISPOSITION = re.compile(r'form-data; name="([A-Za-z0-9_.\[\]-]{1,128})"(?:; filename="([^"\\]{0,255})")?')
_ENCODED_BREAKS = re.compile(r"%(?:22|0d|0a)", re.IGNORECASE)
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:; ?{_TOKEN}={_TOKEN})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- errors -----------------------------------------------------------------------------------
def _size(size: int) -> str:
    return f"{size / MB:g}MB"


def file_too_large(field_name: str, limit: int, *, label: str = "Uploaded") -> OpenAIError:
    """The one answer to a file over its limit: 413 ``file_too_large`` naming the field
    (``image[]`` is named ``image``), e.g. "Image file exceeds maximum size of 4MB"."""
    return OpenAIError(
        413,
        f"{label} file exceeds maximum size of {_size(limit)}",
        param=field_name.removesuffix("[]"),
        code="file_too_large",
    )


def body_too_large(limit: int) -> OpenAIError:
    """A whole multipart body over its limit: 413 ``request_too_large``."""
    return OpenAIError(413, f"Request body exceeds maximum size of {_size(limit)}", code="request_too_large")


def malformed(message: str) -> OpenAIError:
    return OpenAIError(400, f"Malformed multipart body: {message}", code="invalid_multipart")


def _field_error(name: str, what: str) -> OpenAIError:
    return OpenAIError(400, f"Form field '{name}' {what}", param=name, code="invalid_multipart")


# --- the shared pieces ------------------------------------------------------------------------
def check_part_headers(segment: multipart.MultipartSegment) -> None:
    """400 unless a part's headers read the same in every multipart parser (module doc)."""
    names = [name for name, _ in segment.headerlist]
    if sorted(set(names)) != sorted(names) or not set(names) <= {"Content-Disposition", "Content-Type"}:
        raise malformed("a part may have one Content-Disposition and one Content-Type header, nothing else")
    for name, value in segment.headerlist:
        if _CONTROL.search(value):
            raise malformed(f"a control character in a part's {name} header")
        if name == "Content-Type" and not _CONTENT_TYPE.fullmatch(value):
            raise malformed("a part's Content-Type is not a plain media type")
        if name == "Content-Disposition":
            match = _DISPOSITION.fullmatch(value)
            if match is None or _ENCODED_BREAKS.search(match.group(2) or ""):
                raise malformed(
                    'a part\'s Content-Disposition must be form-data; name="..."; filename="..." with a '
                    "plain field name, and a file name without quotes, backslashes or encoded line breaks"
                )


def convert_fields(fields: Mapping[str, Any], type_: type[T]) -> T:
    """Plain form fields to a typed struct ("0.2" becomes 0.2; "hot" is a 400 naming the field)."""
    try:
        return msgspec.convert(fields, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise from_msgspec_error(exc) from None


@dataclass(frozen=True)
class FormLimits:
    """What one form may hold. ``file_label`` starts the too-large message ("Audio", "Image")."""

    max_file_bytes: int
    max_total_bytes: int
    file_label: str = "Uploaded"


def _boundary(request: Request[Any, Any, Any], *, strict: bool) -> tuple[str, str]:
    """The request's content type and multipart boundary (400 when it is not a form)."""
    content_type = request.headers.get("content-type", "")
    media_type, options = multipart.parse_options_header(content_type)
    if media_type != "multipart/form-data" or not options.get("boundary"):
        raise OpenAIError(
            400,
            "This endpoint takes multipart/form-data (as the OpenAI SDK sends it)",
            code="invalid_content_type",
        )
    boundary: str = options["boundary"]
    if strict and (not _BOUNDARY.fullmatch(boundary) or _CONTROL.search(content_type)):
        raise malformed("the boundary must be 1-70 RFC 2046 characters")
    return content_type, boundary


def _declared_length(request: Request[Any, Any, Any], limits: FormLimits) -> int | None:
    declared = request.headers.get("content-length")
    length = int(declared) if declared and declared.isdigit() else None
    if length is not None and length > limits.max_total_bytes:
        raise body_too_large(limits.max_total_bytes)
    return length


@dataclass
class Upload:
    """A file part of a form read whole."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class ParsedForm:
    # Plain fields by name (a ``name[]`` field sent several times: its last value).
    fields: dict[str, str] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)
    # Every plain field in the order sent, repeated ones included (the official SDKs send a
    # list of objects as ``loras[][name]``, ``loras[][weight]``, ``loras[][name]``, ...).
    items: list[tuple[str, str]] = field(default_factory=list)

    def uploads(self, *names: str) -> list[Upload]:
        """The files sent under any of ``names`` (e.g. ``"image", "image[]"``), in order."""
        return [f for f in self.files if f.field in names]


class _FormReader:
    """Feeds a body's chunks through the parser with the limits and field rules of the module
    doc; keeps the plain fields and (``keep_files``) the files, counting the files' bytes."""

    def __init__(
        self,
        boundary: str,
        limits: FormLimits,
        *,
        strict: bool,
        keep_files: bool,
        on_part: Callable[[multipart.MultipartSegment], None] | None = None,
    ) -> None:
        self.limits = limits
        self.strict = strict
        self.keep_files = keep_files
        self.form = ParsedForm()
        self.total_bytes = 0
        self.file_bytes = 0
        self._parser = multipart.PushMultipartParser(boundary, max_segment_count=MAX_PARTS, strict=strict)
        self._segment: multipart.MultipartSegment | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        # Called with each part's headers as it begins (relay mode: its file-part rules).
        self._on_part = on_part

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        if self.total_bytes > self.limits.max_total_bytes:
            raise body_too_large(self.limits.max_total_bytes)
        try:
            for event in self._parser.parse(chunk):
                self._event(event)
        except multipart.MultipartError as exc:
            raise malformed(str(exc)) from None

    def close(self) -> None:
        """End of the body: it must be complete."""
        try:
            self._parser.close(check_complete=True)
        except multipart.MultipartError as exc:
            raise malformed(str(exc)) from None

    def _event(self, event: multipart.MultipartSegment | bytes | None) -> None:
        if isinstance(event, multipart.MultipartSegment):
            if self.strict:
                check_part_headers(event)
            if self._on_part is not None:
                self._on_part(event)
            self._segment, self._chunks, self._size = event, [], 0
            return
        segment = self._segment
        assert segment is not None
        is_file = segment.filename is not None
        if event:
            self._size += len(event)
            if is_file:
                self.file_bytes += len(event)
            if is_file and self._size > self.limits.max_file_bytes:
                raise file_too_large(segment.name, self.limits.max_file_bytes, label=self.limits.file_label)
            if not is_file and self._size > MAX_FIELD_BYTES:
                raise _field_error(segment.name, "is too long")
            if self.keep_files or not is_file:
                self._chunks.append(event)
            return
        # The end of a part.
        data = b"".join(self._chunks)
        if is_file:
            if self.keep_files:
                self.form.files.append(Upload(segment.name, segment.filename, segment.content_type, data))
        else:
            if segment.name in self.form.fields and "[]" not in segment.name:
                raise _field_error(segment.name, "is sent twice")
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _field_error(segment.name, "is not UTF-8") from None
            self.form.fields[segment.name] = value
            self.form.items.append((segment.name, value))
        self._segment, self._chunks = None, []


# --- buffered mode ----------------------------------------------------------------------------
async def parse_multipart(
    request: Request[Any, Any, Any],
    *,
    max_file_bytes: int,
    max_total_bytes: int,
    file_label: str = "Uploaded",
) -> ParsedForm:
    """Read a whole form (buffered mode): every field and file, within the limits (module doc).
    Part headers are read leniently: a caller re-encodes what it sends on (:func:`encode_multipart`)."""
    limits = FormLimits(max_file_bytes, max_total_bytes, file_label)
    _, boundary = _boundary(request, strict=False)
    _declared_length(request, limits)
    reader = _FormReader(boundary, limits, strict=False, keep_files=True)
    async for chunk in request.stream():
        reader.feed(chunk)
    reader.close()
    return reader.form


# What part names, file names and content types of a router-built form may be made of: no quote,
# no CR/LF, no ``;``. The caller chooses them (``image-0.png``, ``mask.png``), never the client.
_HEADER_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/+-[]")


def _header_token(value: str) -> str:
    if not 0 < len(value) <= 128 or not _HEADER_TOKEN_CHARS.issuperset(value):
        raise ValueError(f"not a safe multipart header value: {value!r}")
    return value


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """Build a multipart/form-data body: ``files`` items are (field, filename, data, type).

    Names, file names and content types go into part headers, so each must be a plain token
    (a ``ValueError`` otherwise: the caller chose it). Values and file data are part bodies,
    and the random boundary is one that none of them contains. Returns (body, content type).
    """
    values = {_header_token(name): value.encode() for name, value in fields.items()}
    for name, filename, _, content_type in files:
        for token in (name, filename, content_type):
            _header_token(token)
    boundary = f"llmlb-{secrets.token_hex(16)}"
    while any(boundary.encode() in data for data in (*values.values(), *(f[2] for f in files))):
        boundary = f"llmlb-{secrets.token_hex(16)}"
    parts: list[bytes] = []
    for name, value in values.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value + b"\r\n")
    for name, filename, data, content_type in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- relay mode -------------------------------------------------------------------------------
class MultipartRelay:
    """A form with one file part, relayed to the backend as it arrives (relay mode).

    1. :meth:`read_head` reads the body until the file part has begun *and* ``model`` is known,
       keeping those first chunks (the small fields plus the first piece of the file). The
       official SDKs (and ``curl -F`` in the usual order) send the fields first, so this is a few
       KB. A client that sends ``model`` after the file makes the router read on, up to the
       limits, before it can route: that is the documented fallback.
    2. The fields read so far are validated (a 400 before any node is involved), then
       :meth:`body` yields the kept chunks followed by the rest of the request stream,
       unchanged: the backend receives the client's exact bytes (wrap it in ``StreamBody``).
    3. Parsing goes on over every chunk *before* it is forwarded: a file over the limit, a
       second file part or a malformed body stops the relay at once (the upstream request is
       aborted, the client gets the error), and at the end of the body every field (including
       any after the file) is validated again and the file must have been present.

    Part headers are strict (module doc); only the part named ``file_field`` has a file name.
    """

    def __init__(
        self,
        request: Request[Any, Any, Any],
        *,
        max_file_bytes: int,
        max_total_bytes: int,
        validate: Callable[[dict[str, str]], object],
        file_field: str = "file",
        file_label: str = "Uploaded",
    ) -> None:
        limits = FormLimits(max_file_bytes, max_total_bytes, file_label)
        self.content_type, boundary = _boundary(request, strict=True)
        self.content_length = _declared_length(request, limits)
        self.file_field = file_field
        self._validate = validate
        self._source = request.stream()
        self._reader = _FormReader(boundary, limits, strict=True, keep_files=False, on_part=self._check_part)
        self.fields = self._reader.form.fields
        self.file_seen = False
        self.eof = False
        self._head: list[bytes] = []

    def _check_part(self, segment: multipart.MultipartSegment) -> None:
        if (segment.name == self.file_field) != (segment.filename is not None):
            # Parsers tell files from fields differently: only the file part is a file, and it is one.
            raise malformed(f"only the '{self.file_field}' part has a filename, and it must have one")
        if segment.name == self.file_field:
            if self.file_seen:
                raise OpenAIError(
                    400,
                    f"Only one '{self.file_field}' part is allowed",
                    param=self.file_field,
                    code="invalid_file",
                )
            self.file_seen = True

    def _finish(self) -> None:
        """End of the body: it must be complete, hold a non-empty file, and valid fields."""
        self.eof = True
        self._reader.close()
        if not self.file_seen:
            raise OpenAIError(
                400,
                f"{self.file_field} is required (a part named '{self.file_field}')",
                param=self.file_field,
                code="missing_file",
            )
        if self._reader.file_bytes == 0:
            raise OpenAIError(
                400, f"'{self.file_field}' is an empty file", param=self.file_field, code="invalid_file"
            )
        self._validate(self.fields)

    async def read_head(self) -> dict[str, str]:
        """Read until the file has begun with ``model`` known (or the body ends); the fields."""
        while not (self.file_seen and "model" in self.fields):
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._finish()
                break
            self._head.append(chunk)
            self._reader.feed(chunk)
        self._validate(self.fields)
        return self.fields

    async def body(self) -> AsyncIterator[bytes]:
        """The client's bytes: the head read so far, then the rest as it arrives."""
        head, self._head = self._head, []
        for chunk in head:
            yield chunk
        del head
        if self.eof:
            return
        async for chunk in self._source:
            self._reader.feed(chunk)  # before forwarding: an over-limit chunk never reaches the node
            yield chunk
        self._finish()

    async def aclose(self) -> None:
        # The upstream transport may still hold the body generator (an early upstream answer).
        with contextlib.suppress(RuntimeError):
            await self._source.aclose()
