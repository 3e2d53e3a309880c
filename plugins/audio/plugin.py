"""The audio capability as a router plugin: transcriptions, translations, speech.

Model capability flags: ``speech_to_text`` (``/v1/audio/transcriptions`` and
``/v1/audio/translations``) and ``text_to_speech`` (``/v1/audio/speech``). They are served by
nodes running the ``openai_compatible`` runtime and by registered OpenAI-compatible endpoints
(e.g. a whisper.cpp server, any OpenAI-compatible TTS server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.capability import Capability
from llmlb_core.hookspecs import hookimpl
from llmlb_plugins.audio.protocol import (
    SPEECH_TO_TEXT,
    TEXT_TO_SPEECH,
    AudioModelDefaults,
    SpeechRequest,
    TranscriptionFields,
    TranslationFields,
)
from llmlb_plugins.audio.routes import build_routes
from llmlb_plugins.audio.settings import load_audio_settings

NAME = "audio"
FLAGS = frozenset({SPEECH_TO_TEXT, TEXT_TO_SPEECH})
RUNTIME_TYPES = frozenset({"openai_compatible", "whisper_cpp", "generic"})


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability], None]) -> None:
    register(
        Capability(
            name=NAME,
            model_flags=FLAGS,
            runtime_types=RUNTIME_TYPES,
            description="OpenAI audio: transcriptions, translations (uploads streamed), speech (streamed)",
            defaults_schema="AudioModelDefaults",
        )
    )


@hookimpl
def llmlb_register_routes(register: Callable[..., None], settings: dict[str, dict[str, Any]]) -> None:
    register(NAME, *build_routes(load_audio_settings(settings[NAME])))


@hookimpl
def llmlb_register_schemas(register: Callable[[str, str, type], None]) -> None:
    register(NAME, "TranscriptionFields", TranscriptionFields)
    register(NAME, "TranslationFields", TranslationFields)
    register(NAME, "SpeechRequest", SpeechRequest)
    register(NAME, "AudioModelDefaults", AudioModelDefaults)
