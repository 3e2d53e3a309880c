"""OpenAI-compatible upstream servers: kinds, model discovery and the capability flags of models.

Shared by the router (endpoints an admin registers, ``/v0/endpoints``) and by the node's
``openai_compatible`` runtime (a node fronting a local server), so both advertise a given
server's models the same way.

Capability flags of a model, first match wins:

1. ``model_capabilities[model]`` declared by the admin;
2. ``capabilities`` declared by the admin for every model of the server;
3. a guess from the kind and the model id: kind ``whisper_cpp``, or an id containing
   ``whisper`` or ``transcribe``: ``speech_to_text``; an id containing ``embed``:
   ``embeddings``; an id containing ``tts``: ``text_to_speech``; anything else:
   ``chat_completion`` and ``text_completion``.

Flag aliases accepted from admins (what earlier llmlb versions called them):
``text_generation`` = ``chat_completion`` + ``text_completion``, ``embedding`` = ``embeddings``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import httpx
import msgspec

from llmlb_core.protocol import ModelAdvert
from llmlb_core.upstream import BadAnswer, close_response, is_timeout, read_answer

# Most bytes of a model list read from an endpoint (a hostile one could send any amount).
MAX_MODEL_LIST_BYTES = 4 * 1024 * 1024

Kind = Literal["llama_cpp", "vllm", "ollama", "whisper_cpp", "generic"]
KINDS: tuple[str, ...] = ("llama_cpp", "vllm", "ollama", "whisper_cpp", "generic")

CHAT = "chat_completion"
COMPLETION = "text_completion"
EMBEDDINGS = "embeddings"
STT = "speech_to_text"
TTS = "text_to_speech"
# Every flag an OpenAI-compatible server can serve through the text and audio capabilities.
FLAGS: frozenset[str] = frozenset({CHAT, COMPLETION, EMBEDDINGS, STT, TTS})
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "text_generation": (CHAT, COMPLETION),
    "embedding": (EMBEDDINGS,),
}

_EMBED = re.compile(r"embed", re.IGNORECASE)
_STT = re.compile(r"whisper|transcri", re.IGNORECASE)
_TTS = re.compile(r"(^|[^a-z])tts|text-to-speech", re.IGNORECASE)


class UpstreamError(Exception):
    """The upstream's model list could not be read (unreachable, error status, bad body)."""


class _UpstreamModel(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_UpstreamModel]


_models_decoder = msgspec.json.Decoder(_ModelList)


def normalize_url(url: str) -> str:
    """``http://host:8000/v1/`` and ``http://host:8000`` both become ``http://host:8000``."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1").rstrip("/")


def expand_flags(flags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for flag in flags:
        out.extend(FLAG_ALIASES.get(flag, (flag,)))
    return sorted(set(out))


def unknown_flags(flags: Iterable[str], known: Iterable[str]) -> list[str]:
    return sorted(set(expand_flags(flags)) - set(known))


def guess_flags(model_id: str, kind: str) -> list[str]:
    if kind == "whisper_cpp" or _STT.search(model_id):
        return [STT]
    if _EMBED.search(model_id):
        return [EMBEDDINGS]
    if _TTS.search(model_id):
        return [TTS]
    return [CHAT, COMPLETION]


def model_flags(
    model_id: str,
    kind: str,
    capabilities: Iterable[str] | None = None,
    model_capabilities: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    if model_capabilities and model_id in model_capabilities:
        return expand_flags(model_capabilities[model_id])
    if capabilities:
        return expand_flags(capabilities)
    return guess_flags(model_id, kind)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


async def fetch_model_ids(
    client: httpx.AsyncClient, base_url: str, api_key: str | None, *, timeout_s: float
) -> list[str] | None:
    """``GET {base_url}/v1/models``: the ids it lists, or None when the server has no such route
    (404/405/501, e.g. whisper.cpp's server); raises :class:`UpstreamError` otherwise."""
    request = client.build_request(
        "GET", f"{base_url}/v1/models", headers=auth_headers(api_key), timeout=httpx.Timeout(timeout_s)
    )
    try:
        response = await client.send(request, stream=True)
        try:
            if response.status_code in (404, 405, 501):
                return None
            if response.status_code != 200:
                raise UpstreamError(f"GET /v1/models answered HTTP {response.status_code}")
            content = await read_answer(response, MAX_MODEL_LIST_BYTES)
        finally:
            await close_response(response)
    except httpx.HTTPError as exc:
        if is_timeout(exc):
            raise UpstreamError(f"timed out after {timeout_s:g}s") from exc
        raise UpstreamError(f"unreachable ({type(exc.__cause__ or exc).__name__})") from exc
    except BadAnswer as exc:
        raise UpstreamError(f"GET /v1/models: {exc}") from None
    try:
        listed = _models_decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UpstreamError(f"GET /v1/models answered an unreadable model list: {exc}") from None
    return list(dict.fromkeys(m.id for m in listed.data))


def build_adverts(
    listed: list[str] | None,
    *,
    kind: str,
    runtime: str,
    models: list[str] | None = None,
    capabilities: Iterable[str] | None = None,
    model_capabilities: Mapping[str, Iterable[str]] | None = None,
    details: dict[str, Any] | None = None,
) -> list[ModelAdvert]:
    """The models to advertise: those listed (filtered to ``models`` when given), or ``models``
    when the server lists none; raises :class:`UpstreamError` when there is nothing to go on."""
    if listed is None:
        if not models:
            raise UpstreamError(
                "GET /v1/models is not implemented by this server; declare its models ('models')"
            )
        ids = list(models)
    else:
        ids = [m for m in listed if m in models] if models else listed
    caps = list(capabilities) if capabilities else None
    return [
        ModelAdvert(
            id=model_id,
            capabilities=model_flags(model_id, kind, caps, model_capabilities),
            runtime=runtime,
            details={"kind": kind, **(details or {})},
        )
        for model_id in ids
    ]
