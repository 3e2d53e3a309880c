"""The router's audio routes: transcriptions and translations (uploads relayed as they arrive),
speech (the audio relayed to the client as the backend produces it)."""

from __future__ import annotations

from typing import Any, TypeVar

from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.bodies import decode_json_bytes
from llmlb_core.errors import OpenAIError
from llmlb_core.services import get_services
from llmlb_core.streaming import StreamBody, stream_from_node, with_body_defaults
from llmlb_plugins.audio.protocol import (
    SPEECH_TO_TEXT,
    TEXT_TO_SPEECH,
    SpeechRequest,
    TranscriptionFields,
    TranslationFields,
)
from llmlb_plugins.audio.settings import AudioSettings
from llmlb_plugins.audio.uploads import MultipartRelay, convert_fields

T = TypeVar("T")

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


def build_routes(cfg: AudioSettings) -> list[BaseRouteHandler]:
    max_total = cfg.max_upload_bytes + FORM_OVERHEAD_BYTES

    async def relay_upload(request: Request[Any, Any, Any], fields_type: type[T], path: str) -> Response[Any]:
        services = get_services(request)
        relay = MultipartRelay(
            request,
            max_file_bytes=cfg.max_upload_bytes,
            max_total_bytes=max_total,
            validate=lambda fields: convert_fields(fields, fields_type),
        )
        try:
            fields = await relay.read_head()
            return await stream_from_node(
                services,
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

    @post("/v1/audio/transcriptions", status_code=200, request_max_body_size=max_total)
    async def transcriptions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await relay_upload(request, TranscriptionFields, "/v1/audio/transcriptions")

    @post("/v1/audio/translations", status_code=200, request_max_body_size=max_total)
    async def translations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await relay_upload(request, TranslationFields, "/v1/audio/translations")

    @post("/v1/audio/speech", status_code=200, request_max_body_size=SPEECH_BODY_LIMIT)
    async def speech(request: Request[Any, Any, Any]) -> Response[Any]:
        services = get_services(request)
        body = await request.body()
        req = decode_json_bytes(body, SpeechRequest)
        if not req.input.strip():
            raise OpenAIError(400, "input must not be empty", param="input", code="empty_input")
        return await stream_from_node(
            services,
            req.model,
            TTS_FLAGS,
            "/v1/audio/speech",
            content=with_body_defaults(body, services.model_defaults(req.model)),
            content_type="application/json",
            accept=SPEECH_TYPES,
        )

    return [transcriptions, translations, speech]
