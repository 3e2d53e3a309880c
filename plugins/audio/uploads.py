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
"""

from __future__ import annotations

import contextlib
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
        self.content_type = content_type
        declared = request.headers.get("content-length")
        self.content_length = int(declared) if declared and declared.isdigit() else None
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        if self.content_length is not None and self.content_length > max_total_bytes:
            raise self._too_large()
        self._validate = validate
        self._source = request.stream()
        self._parser = multipart.PushMultipartParser(options["boundary"], max_segment_count=MAX_PARTS)
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
            elif segment.filename is None:
                self._value_size += len(event)
                if self._value_size > MAX_FIELD_BYTES:
                    raise OpenAIError(400, f"Form field '{segment.name}' is too long", param=segment.name)
                self._value.append(event)
            return
        # End of a part.
        if segment.name != FILE_FIELD and segment.filename is None:
            self.fields[segment.name] = b"".join(self._value).decode("utf-8", "replace")
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
