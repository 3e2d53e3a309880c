"""Strict request-body decoding shared by core and plugin routes: the one checked path for JSON.

Litestar converts typed bodies in lax mode (``{"n": "2"}`` would pass as 2); routes that care
read the raw body and decode it here with a typed, strict msgspec decoder, so every error is
an OpenAI-shaped 400 naming the offending field.

Client bytes are hostile until checked. Before any decoder sees them, :func:`check_json_bytes`
refuses (400) a body that is not UTF-8 (msgspec would raise ``UnicodeDecodeError`` on a bad
string it decodes and let one through in a field it skips, on to the node) and a body nested
deeper than :data:`MAX_JSON_DEPTH` (msgspec and ``json`` recurse per level: 100k ``[`` is a
``RecursionError``, and a deep body that the router survives could still break a node).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TypeVar

import msgspec
from litestar import Request

from llmlb_core.server.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")

# Deepest nesting of arrays/objects accepted in a JSON body (OpenAI requests need a handful).
MAX_JSON_DEPTH = 64

# What the depth check keeps of a body: string quotes and brackets ({} folded into []).
_NOT_STRUCTURAL = bytes(c for c in range(256) if c not in b'"[]{}')
_FOLD_BRACKETS = bytes.maketrans(b"{}", b"[]")


@lru_cache(maxsize=4)
def _depth_pattern(limit: int) -> re.Pattern[bytes]:
    """Matches a run of strings and containers nested at most ``limit`` deep; possessive
    quantifiers only, so the match is one pass, never backtracking."""
    string = rb'"[^"]*+"'
    container = rb"\[(?:" + string + rb")*+\]"
    for _ in range(limit - 1):
        container = rb"\[(?:" + string + rb"|" + container + rb")*+\]"
    return re.compile(rb"(?:" + string + rb"|" + container + rb")*+")


def _nested_too_deep(body: bytes, limit: int) -> bool:
    """Whether ``body`` (UTF-8) nests deeper than ``limit`` or its brackets do not balance.
    Linear, in C: escapes that hide a quote are dropped, everything but quotes and brackets is
    deleted, and a possessive regex matches what is left."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot be deeper (the common case, counted without a copy)
    if b"\\" in body:  # outside strings a backslash is invalid JSON; inside, only pairs matter
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(_FOLD_BRACKETS, _NOT_STRUCTURAL)
    if structure.count(b"[") <= limit:
        return False  # cannot be deeper; malformed input is the decoder's to report
    return _depth_pattern(limit).fullmatch(structure) is None


def check_json_bytes(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """400 unless ``body`` is UTF-8 and nested at most ``max_depth`` levels deep."""
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OpenAIError(
                400, f"Request body is not valid UTF-8 (at byte {exc.start})", code="invalid_json"
            ) from None
    if _nested_too_deep(body, max_depth):
        raise OpenAIError(
            400,
            f"Request body is nested deeper than {max_depth} levels (or its brackets do not balance)",
            code="invalid_json",
        )


@lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_json_bytes(body: bytes, type_: type[T]) -> T:
    """Check ``body`` (:func:`check_json_bytes`) and decode it strictly as ``type_``."""
    if not body.strip():
        raise OpenAIError(400, "Request body is empty; expected a JSON object", code="invalid_json")
    check_json_bytes(body)
    try:
        return _decoder(type_).decode(body)  # type: ignore[no-any-return, arg-type]
    except msgspec.DecodeError as exc:  # ValidationError included
        raise from_msgspec_error(exc) from None
    except (RecursionError, UnicodeDecodeError):  # the checks above make these unreachable
        raise OpenAIError(400, "Request body is not a readable JSON document", code="invalid_json") from None


async def decode_json(request: Request[Any, Any, Any], type_: type[T]) -> T:
    return decode_json_bytes(await request.body(), type_)


def with_body_defaults(body: bytes, defaults: Mapping[str, Any]) -> bytes:
    """Fill top-level JSON fields the client left out from a model's admin-set defaults.

    The client's bytes are returned untouched when there is nothing to add; otherwise the body
    is re-encoded with the missing keys added (the client's own values always win).
    """
    if not defaults:
        return body
    check_json_bytes(body)  # nesting and UTF-8 checked before any decoder sees the bytes
    try:
        data = msgspec.json.decode(body)  # refuses NaN and lone surrogates, which json accepts
    except msgspec.DecodeError:
        raise OpenAIError(400, "Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "Request body must be a JSON object", code="invalid_json")
    missing = {k: v for k, v in defaults.items() if k not in data}
    if not missing:
        return body
    return msgspec.json.encode({**data, **missing})
