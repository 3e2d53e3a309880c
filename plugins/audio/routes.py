"""The router's audio routes: transcriptions and translations (the upload relayed to the node as
it arrives, ``llmlb_core.api.MultipartRelay``), speech (the audio relayed to the client as the
backend produces it). Both go through ``context.forward.stream``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import (
    CapabilityContext,
    MultipartRelay,
    OpenAIError,
    StreamBody,
    convert_fields,
    decode_json_bytes,
    openapi_form_body,
    openapi_json_body,
    with_body_defaults,
)
from llmlb_plugins.audio.protocol import (
    SPEECH_TO_TEXT,
    TEXT_TO_SPEECH,
    SpeechRequest,
    TranscriptionFields,
    TranslationFields,
)
from llmlb_plugins.audio.settings import AudioSettings

STT_FLAGS = frozenset({SPEECH_TO_TEXT})
TTS_FLAGS = frozenset({TEXT_TO_SPEECH})
SPEECH_BODY_LIMIT = 1024 * 1024
# Room for the form fields and multipart framing around the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
# What a backend's answer may be: a transcript in each response_format (or its SSE stream), and
# audio (or speech SSE). Anything else is a bad answer (502, the node suspect).
TRANSCRIPT_TYPES = (
    "application/json",
    "text/plain",
    "text/vtt",
    "text/srt",
    "application/x-subrip",
    "text/event-stream",
)
SPEECH_TYPES = ("audio/*", "application/octet-stream", "text/event-stream")


def build_routes(context: CapabilityContext[AudioSettings]) -> list[BaseRouteHandler]:
    max_file = context.settings.max_upload_bytes
    max_total = max_file + FORM_OVERHEAD_BYTES

    def upload_route(path: str, fields_type: type[msgspec.Struct]) -> BaseRouteHandler:
        """A route that relays a ``file`` upload with its form fields (``fields_type``)."""

        async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
            relay = MultipartRelay(
                request,
                max_file_bytes=max_file,
                max_total_bytes=max_total,
                validate=lambda fields: convert_fields(fields, fields_type),
                file_label="Audio",
            )
            try:
                fields = await relay.read_head()
                return await context.forward.stream(
                    fields["model"],
                    STT_FLAGS,
                    path,
                    content=StreamBody(relay.body()),
                    content_type=relay.content_type,
                    content_length=relay.content_length,
                    accept=TRANSCRIPT_TYPES,
                )
            finally:
                await relay.aclose()

        handler.__name__ = handler.__qualname__ = path.strip("/").replace("/", "_")
        docs = openapi_form_body(fields_type, {"file": "The audio file"}, required_files=["file"])
        return post(path, status_code=200, request_max_body_size=max_total, operation_class=docs)(handler)

    @post(
        "/v1/audio/speech",
        status_code=200,
        request_max_body_size=SPEECH_BODY_LIMIT,
        operation_class=openapi_json_body(SpeechRequest),
    )
    async def speech(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, SpeechRequest)
        if not req.input.strip():
            raise OpenAIError(400, "input must not be empty", param="input", code="empty_input")
        return await context.forward.stream(
            req.model,
            TTS_FLAGS,
            "/v1/audio/speech",
            content=with_body_defaults(body, context.models.defaults(req.model)),
            content_type="application/json",
            accept=SPEECH_TYPES,
        )

    return [
        upload_route("/v1/audio/transcriptions", TranscriptionFields),
        upload_route("/v1/audio/translations", TranslationFields),
        speech,
    ]
