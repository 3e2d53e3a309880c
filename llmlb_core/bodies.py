"""Strict request-body decoding shared by core and plugin routes.

Litestar converts typed bodies in lax mode (``{"n": "2"}`` would pass as 2); routes that care
read the raw body and decode it here with a typed, strict msgspec decoder, so every error is
an OpenAI-shaped 400 naming the offending field.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

import msgspec
from litestar import Request

from llmlb_core.errors import OpenAIError, from_msgspec_error

T = TypeVar("T")


@lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_json_bytes(body: bytes, type_: type[T]) -> T:
    if not body.strip():
        raise OpenAIError(400, "Request body is empty; expected a JSON object", code="invalid_json")
    try:
        return _decoder(type_).decode(body)  # type: ignore[no-any-return, arg-type]
    except msgspec.DecodeError as exc:  # ValidationError included
        raise from_msgspec_error(exc) from None


async def decode_json(request: Request[Any, Any, Any], type_: type[T]) -> T:
    return decode_json_bytes(await request.body(), type_)
