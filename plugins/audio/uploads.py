"""Audio uploads relayed as they arrive: the multipart body is parsed in passing, never held whole.

Transcriptions and translations take ``multipart/form-data`` with a ``file`` part of up to
25 MB. The router must know ``model`` (a form field) before it can pick a node, but it should
not hold 25 MB per request in memory. :class:`MultipartRelay` does both:

1. :meth:`MultipartRelay.read_head` reads the body until the ``file`` part has begun *and*
   ``model`` is known, keeping those first chunks (the small fields plus the first piece of the
   file). The official SDKs (and ``curl -F`` in the usual order) send the fields first, so this
   is a few KB. A client that sends ``model`` after the file makes the router read on, up to
   the size limits, before it can route: that is the documented fallback.
2. The fields read so far are validated (a 400 before any node is involved), then
   :meth:`MultipartRelay.body` yields the kept chunks followed by the rest of the request
   stream, unchanged, to the upstream: the backend receives the client's exact bytes.
3. Parsing continues on every chunk *before* it is forwarded: a file over the limit, a second
   ``file`` part or a malformed body stops the relay at once (the upstream request is aborted,
   the client gets the error), and at the end of the body every field (including any that came
   after the file) is validated again and the file must have been present.

The backend parses the same bytes with its own multipart parser (cpp-httplib in whisper.cpp,
python-multipart in FastAPI servers, ...), so the router accepts only a body that every parser
reads the same way (:func:`check_part_headers`, the parser in strict mode): a plain boundary;
per part, one ``Content-Disposition: form-data; name="..."[; filename="..."]`` and at most one
``Content-Type``, nothing else; a file name on the ``file`` part and on no other; no control
character, backslash or (percent-encoded) quote or line break in a name or file name, which
parsers unquote differently; no folded header line; no field sent twice. Anything else is a
400 before any byte reaches a node, so a hostile file name cannot make the backend see another
field, another file or another model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec
import multipart
from litestar import Request

from llmlb_core.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")

FILE_FIELD = "file"
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


def _ambiguous(message: str) -> OpenAIError:
    return OpenAIError(400, f"Malformed multipart body: {message}", code="invalid_multipart")


def _field_error(name: str, what: str) -> OpenAIError:
    return OpenAIError(400, f"Form field '{name}' {what}", param=name, code="invalid_multipart")


def check_part_headers(segment: multipart.MultipartSegment) -> None:
    """400 unless a part's headers read the same in every multipart parser (module doc)."""
    names = [name for name, _ in segment.headerlist]
    if sorted(set(names)) != sorted(names) or not set(names) <= {"Content-Disposition", "Content-Type"}:
        raise _ambiguous("a part may have one Content-Disposition and one Content-Type header, nothing else")
    for name, value in segment.headerlist:
        if _CONTROL.search(value):
            raise _ambiguous(f"a control character in a part's {name} header")
        if name == "Content-Type" and not _CONTENT_TYPE.fullmatch(value):
            raise _ambiguous("a part's Content-Type is not a plain media type")
        if name == "Content-Disposition":
            match = _DISPOSITION.fullmatch(value)
            if match is None or _ENCODED_BREAKS.search(match.group(2) or ""):
                raise _ambiguous(
                    'a part\'s Content-Disposition must be form-data; name="..."; filename="..." with a '
                    "plain field name, and a file name without quotes, backslashes or encoded line breaks"
                )


def convert_fields(fields: dict[str, str], type_: type[T]) -> T:
    """Plain form fields to a typed struct ("0.2" becomes 0.2; "hot" is a 400 naming the field)."""
    try:
        return msgspec.convert(fields, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise from_msgspec_error(exc) from None


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g}MB"


class MultipartRelay:
    def __init__(
        self,
        request: Request[Any, Any, Any],
        *,
        max_file_bytes: int,
        max_total_bytes: int,
        validate: Callable[[dict[str, str]], object],
    ) -> None:
        content_type = request.headers.get("content-type", "")
        media_type, options = multipart.parse_options_header(content_type)
        if media_type != "multipart/form-data" or not options.get("boundary"):
            raise OpenAIError(
                400,
                "This endpoint takes multipart/form-data with a 'file' part (as the OpenAI SDK sends it)",
                code="invalid_content_type",
            )
        if not _BOUNDARY.fullmatch(options["boundary"]) or _CONTROL.search(content_type):
            raise _ambiguous("the boundary must be 1-70 RFC 2046 characters")
        self.content_type = content_type
        declared = request.headers.get("content-length")
        self.content_length = int(declared) if declared and declared.isdigit() else None
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        if self.content_length is not None and self.content_length > max_total_bytes:
            raise self._too_large()
        self._validate = validate
        self._source = request.stream()
        self._parser = multipart.PushMultipartParser(
            options["boundary"], max_segment_count=MAX_PARTS, strict=True
        )
        self.fields: dict[str, str] = {}
        self.file_seen = False
        self.file_name: str | None = None
        self.file_bytes = 0
        self.total_bytes = 0
        self.eof = False
        self._head: list[bytes] = []
        self._segment: multipart.MultipartSegment | None = None
        self._value: list[bytes] = []
        self._value_size = 0

    def _too_large(self) -> OpenAIError:
        return OpenAIError(
            413,
            f"Audio file exceeds maximum size of {_mb(self.max_file_bytes)}",
            param=FILE_FIELD,
            code="file_too_large",
        )

    # --- parsing ------------------------------------------------------------------------
    def _feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        if self.total_bytes > self.max_total_bytes:
            raise self._too_large()
        try:
            for event in self._parser.parse(chunk):
                self._event(event)
        except multipart.MultipartError as exc:
            raise OpenAIError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None

    def _event(self, event: multipart.MultipartSegment | bytes | None) -> None:
        if isinstance(event, multipart.MultipartSegment):
            check_part_headers(event)
            if (event.name == FILE_FIELD) != (event.filename is not None):
                # Parsers tell files from fields differently: only 'file' is a file, and it is one.
                raise _ambiguous(f"only the '{FILE_FIELD}' part has a filename, and it must have one")
            self._segment, self._value, self._value_size = event, [], 0
            if event.name == FILE_FIELD:
                if self.file_seen:
                    raise OpenAIError(
                        400, "Only one 'file' part is allowed", param=FILE_FIELD, code="invalid_file"
                    )
                self.file_seen = True
                self.file_name = event.filename
            return
        segment = self._segment
        assert segment is not None
        if event:
            if segment.name == FILE_FIELD:
                self.file_bytes += len(event)
                if self.file_bytes > self.max_file_bytes:
                    raise self._too_large()
            else:
                self._value_size += len(event)
                if self._value_size > MAX_FIELD_BYTES:
                    raise OpenAIError(400, f"Form field '{segment.name}' is too long", param=segment.name)
                self._value.append(event)
            return
        # End of a part.
        if segment.name != FILE_FIELD:
            if segment.name in self.fields and not segment.name.endswith("[]"):
                raise _field_error(segment.name, "is sent twice")
            try:
                self.fields[segment.name] = b"".join(self._value).decode("utf-8")
            except UnicodeDecodeError:
                raise _field_error(segment.name, "is not UTF-8") from None
        self._segment, self._value = None, []

    def _finish(self) -> None:
        """End of the body: it must be complete, hold a file, and every field must be valid."""
        self.eof = True
        try:
            self._parser.close(check_complete=True)
        except multipart.MultipartError as exc:
            raise OpenAIError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None
        if not self.file_seen:
            raise OpenAIError(
                400, "file is required (a part named 'file')", param=FILE_FIELD, code="missing_file"
            )
        if self.file_bytes == 0:
            raise OpenAIError(400, "'file' is an empty file", param=FILE_FIELD, code="invalid_file")
        self._validate(self.fields)

    # --- relaying -----------------------------------------------------------------------
    async def read_head(self) -> dict[str, str]:
        """Read until the file has begun with ``model`` known (or the body ends); the fields."""
        while not (self.file_seen and "model" in self.fields):
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._finish()
                break
            self._head.append(chunk)
            self._feed(chunk)
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
            self._feed(chunk)  # before forwarding: an over-limit chunk never reaches the node
            yield chunk
        self._finish()

    async def aclose(self) -> None:
        # The upstream transport may still hold the body generator (an early upstream answer).
        with contextlib.suppress(RuntimeError):
            await self._source.aclose()
