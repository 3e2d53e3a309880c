"""Audio API request schemas (msgspec): transcriptions, translations, speech.

As for text, the router checks what it must know (``model``, formats, sizes, required fields)
and forwards the client's original bytes, so fields it does not know (``timestamp_granularities[]``,
``instructions``, backend extras) reach the backend untouched. Multipart form fields arrive as
strings and are converted leniently (``"0.2"`` is a float), JSON is decoded strictly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Model capability flags served by the audio capability.
SPEECH_TO_TEXT = "speech_to_text"
TEXT_TO_SPEECH = "text_to_speech"

MAX_SPEECH_INPUT_CHARS = 4096

ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"\S")]  # not blank
TranscriptionFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class TranslationFields(msgspec.Struct, kw_only=True):
    """Plain form fields of ``/v1/audio/translations`` (the ``file`` part is relayed as is)."""

    model: ModelId
    prompt: str | None = None
    response_format: TranscriptionFormat | None = None
    temperature: Temperature | None = None


class TranscriptionFields(TranslationFields, kw_only=True):
    """Plain form fields of ``/v1/audio/transcriptions``."""

    language: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    stream: bool | None = None


class SpeechRequest(msgspec.Struct, kw_only=True):
    model: ModelId
    input: Annotated[str, msgspec.Meta(max_length=MAX_SPEECH_INPUT_CHARS)]
    # A voice name, or (newer API) an object naming a custom voice.
    voice: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | dict[str, Any]
    response_format: SpeechFormat | None = None
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] | None = None
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = None


class AudioModelDefaults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-model defaults an admin may set for an audio model (``POST /v0/models``), checked
    then: fields added to a ``/v1/audio/speech`` request that left them out (uploads to
    transcriptions and translations are relayed exactly as the client sent them)."""

    voice: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | dict[str, Any] | None = None
    response_format: SpeechFormat | None = None
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] | None = None
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = None
