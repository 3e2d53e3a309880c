"""Which models of an OpenAI-compatible server the audio capability claims when their flags were
not declared (``Capability.upstream_flags``).

Speech-to-text: a server of kind ``whisper_cpp``, or an id with ``whisper`` or ``transcri`` in
it (such a model is speech-to-text only). Text-to-speech: an id with ``tts`` as a word start, or
``text-to-speech``, unless it has ``embed`` in it too (the text capability's embeddings model, as
llmlb has always read such an id). Audio has no fallback: a model nobody claims is not audio.
"""

from __future__ import annotations

import re

from llmlb_core.api import UpstreamFlags
from llmlb_plugins.audio.protocol import SPEECH_TO_TEXT, TEXT_TO_SPEECH

_SPEECH_TO_TEXT = re.compile(r"whisper|transcri", re.IGNORECASE)
_TEXT_TO_SPEECH = re.compile(r"(^|[^a-z])tts|text-to-speech", re.IGNORECASE)
_EMBEDDINGS = re.compile(r"embed", re.IGNORECASE)


def claimed_flags(model_id: str, kind: str) -> frozenset[str]:
    if kind == "whisper_cpp" or _SPEECH_TO_TEXT.search(model_id):
        return frozenset({SPEECH_TO_TEXT})
    if _TEXT_TO_SPEECH.search(model_id) and not _EMBEDDINGS.search(model_id):
        return frozenset({TEXT_TO_SPEECH})
    return frozenset()


UPSTREAM_FLAGS = UpstreamFlags(match=claimed_flags)
