"""The audio capability as a router plugin: transcriptions, translations, speech.

Model capability flags: ``speech_to_text`` (``/v1/audio/transcriptions`` and
``/v1/audio/translations``) and ``text_to_speech`` (``/v1/audio/speech``). They are served by
nodes running the ``openai_compatible`` runtime and by registered OpenAI-compatible endpoints
(e.g. a whisper.cpp server, any OpenAI-compatible TTS server).

This module only composes the capability: routes (``routes``), settings (``settings``),
schemas (``protocol``) and how upstream models get their flags (``upstream``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.api import Capability, hookimpl
from llmlb_plugins.audio.protocol import (
    SPEECH_TO_TEXT,
    TEXT_TO_SPEECH,
    AudioModelDefaults,
    SpeechRequest,
    TranscriptionFields,
    TranslationFields,
)
from llmlb_plugins.audio.routes import build_routes
from llmlb_plugins.audio.settings import AudioSettings
from llmlb_plugins.audio.upstream import UPSTREAM_FLAGS

CAPABILITY = Capability(
    name="audio",
    model_flags=frozenset({SPEECH_TO_TEXT, TEXT_TO_SPEECH}),
    build_routes=build_routes,
    settings=AudioSettings,
    description="OpenAI audio: transcriptions, translations (uploads streamed), speech (streamed)",
    schemas={
        "TranscriptionFields": TranscriptionFields,
        "TranslationFields": TranslationFields,
        "SpeechRequest": SpeechRequest,
        "AudioModelDefaults": AudioModelDefaults,
    },
    defaults_schema=AudioModelDefaults,
    upstream_flags=UPSTREAM_FLAGS,
)


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    register(CAPABILITY)
