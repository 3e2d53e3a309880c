"""Request checks shared by the router (routes, dispatch) and the node's stable_diffusion runtime:
prompt, size, unsupported options."""

from __future__ import annotations

import math
import re

from llmlb_core.api import OpenAIError
from llmlb_plugins.images.protocol import SIZE_AUTO, SIZES, parse_size

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def require_prompt(prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise OpenAIError(400, "prompt must be a non-empty string", param="prompt", code="empty_prompt")
    return prompt


def nearest_size(width: int, height: int) -> str:
    """The supported size closest in aspect ratio first, then in area."""

    def distance(candidate: str) -> tuple[float, float]:
        w, h = parse_size(candidate)
        return (abs(math.log((w / h) / (width / height))), abs(math.log((w * h) / (width * height))))

    return min(SIZES, key=distance)


def resolve_size(size: str | None, *, fallback: bool) -> tuple[str, str | None]:
    """Return (size to use, the unsupported size it replaced or None)."""
    if size is None or size == SIZE_AUTO:
        return SIZE_AUTO, None
    if size in SIZES:
        return size, None
    match = _SIZE_RE.match(size)
    if fallback and match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
        return nearest_size(int(match.group(1)), int(match.group(2))), size
    raise OpenAIError(
        400,
        f"Invalid size '{size}'. Supported sizes: {', '.join((*SIZES, SIZE_AUTO))}",
        param="size",
        code="invalid_size",
    )


def reject_streaming(stream: bool | None) -> None:
    if stream:
        raise OpenAIError(
            400,
            "Streaming image generation (stream=true) is not supported",
            param="stream",
            code="unsupported_parameter",
        )
