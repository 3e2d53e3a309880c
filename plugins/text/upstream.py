"""Which models of an OpenAI-compatible server the text capability claims when their flags were
not declared (``Capability.upstream_flags``), and the older flag names admins may still use.

An id with ``embed`` in it is an embeddings model; every model nobody claims is a chat and
completions model (the fallback). Speech-to-text models (kind ``whisper_cpp``, or an id with
``whisper`` or ``transcri`` in it) are never claimed here, even with ``embed`` in their id: they
are the audio capability's alone.
"""

from __future__ import annotations

import re

from llmlb_core.api import UpstreamFlags
from llmlb_plugins.text.protocol import CHAT_COMPLETION, EMBEDDINGS, TEXT_COMPLETION

_EMBED = re.compile(r"embed", re.IGNORECASE)
_SPEECH_TO_TEXT = re.compile(r"whisper|transcri", re.IGNORECASE)

FLAG_ALIASES = {
    "text_generation": frozenset({CHAT_COMPLETION, TEXT_COMPLETION}),
    "embedding": frozenset({EMBEDDINGS}),
}


def claimed_flags(model_id: str, kind: str) -> frozenset[str]:
    if kind == "whisper_cpp" or _SPEECH_TO_TEXT.search(model_id):
        return frozenset()
    if _EMBED.search(model_id):
        return frozenset({EMBEDDINGS})
    return frozenset()


UPSTREAM_FLAGS = UpstreamFlags(match=claimed_flags, fallback=frozenset({CHAT_COMPLETION, TEXT_COMPLETION}))
