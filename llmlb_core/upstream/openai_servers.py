"""OpenAI-compatible upstream servers: their kinds, model discovery, and their models' flags.

Shared by the router (endpoints an admin registers, ``/v0/endpoints``) and by the node's
``openai_compatible`` runtime (a node fronting a local server), so both advertise a given
server's models the same way.

Capability flags of a model, first match wins:

1. ``model_capabilities[model]`` declared by the admin (or the node's operator);
2. ``capabilities`` declared for every model of the server;
3. nothing declared: the advert carries no flags and names the server's kind
   (``details["kind"]``). The router fills them in when it takes the advert in
   (:class:`llmlb_core.router.flag_rules.FlagRules`), from what the enabled capabilities declare
   (``Capability.upstream_flags``): the core knows no flag names, so a model id containing
   ``whisper`` gets ``speech_to_text`` because the audio capability says so.

Declared flags may use the aliases capabilities accept (``Capability.flag_aliases``, e.g. the
text capability's ``text_generation``); the router expands them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import httpx
import msgspec

from llmlb_core.protocol import ModelAdvert
from llmlb_core.upstream.client import (
    BadAnswer,
    close_response,
    is_garbled,
    is_timeout,
    one_line,
    read_answer,
)

# Most bytes of a model list read from an endpoint (a hostile one could send any amount).
MAX_MODEL_LIST_BYTES = 4 * 1024 * 1024

# The kinds of server llmlb knows (``generic``: any other OpenAI-compatible server).
Kind = Literal["llama_cpp", "vllm", "ollama", "whisper_cpp", "generic"]
KINDS: tuple[str, ...] = get_args(Kind)


class UpstreamError(Exception):
    """The upstream's model list could not be read (unreachable, error status, bad body)."""


class ModelListTimeout(UpstreamError):
    """The upstream did not answer ``GET /v1/models`` in time: maybe down, maybe only busy (a
    llama-cpp-python server answers it only between generations)."""


class _UpstreamModel(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_UpstreamModel]


_models_decoder = msgspec.json.Decoder(_ModelList)


def normalize_url(url: str) -> str:
    """``http://host:8000/v1/`` and ``http://host:8000`` both become ``http://host:8000``."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1").rstrip("/")


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
            raise ModelListTimeout(f"timed out after {timeout_s:g}s") from exc
        if is_garbled(exc):
            raise UpstreamError(f"GET /v1/models answered broken HTTP: {one_line(str(exc), 300)}") from None
        raise UpstreamError(f"unreachable ({type(exc.__cause__ or exc).__name__})") from exc
    except BadAnswer as exc:
        raise UpstreamError(f"GET /v1/models: {exc}") from None
    try:
        listed = _models_decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UpstreamError(f"GET /v1/models answered an unreadable model list: {exc}") from None
    return list(dict.fromkeys(m.id for m in listed.data))


def declared_flags(
    model_id: str,
    capabilities: Iterable[str] | None = None,
    model_capabilities: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """The flags declared for ``model_id`` (rules 1 and 2 above), sorted; empty: none."""
    if model_capabilities and model_id in model_capabilities:
        return sorted(set(model_capabilities[model_id]))
    return sorted(set(capabilities or ()))


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
    when the server lists none; raises :class:`UpstreamError` when there is nothing to go on.
    A model without declared flags is advertised with none (the router fills them in)."""
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
            capabilities=declared_flags(model_id, caps, model_capabilities),
            runtime=runtime,
            details={"kind": kind, **(details or {})},
        )
        for model_id in ids
    ]
