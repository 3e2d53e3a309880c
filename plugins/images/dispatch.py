"""Sending an image job to nodes: seed resolution, fan-out of ``n`` over idle nodes, merging,
and turning the nodes' base64 images into stored URLs when the client asked for ``url``.

A job of ``n`` images with seed ``s`` yields images with seeds ``s, s+1, ..., s+n-1`` no matter
how it is split: part ``k`` covering images ``[i, i+c)`` is sent with seed ``s+i`` and ``n=c``,
and stable-diffusion.cpp's batch gives image ``j`` of a part the seed ``seed + j``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Response

from llmlb_core.errors import OpenAIError
from llmlb_core.services import RouterServices, UpstreamResult
from plugins.images.protocol import MAX_SEED, ImageData, ImagesResponse
from plugins.images.url_store import ImageUrlStore

FLAGS = frozenset({"image_generation"})
FILES_PATH = "/v1/images/files"

_response_decoder = msgspec.json.Decoder(ImagesResponse)


@dataclass
class Part:
    offset: int
    count: int


def new_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED - 16)


def split(n: int, ways: int) -> list[Part]:
    """Split ``n`` images into at most ``ways`` contiguous parts of near-equal size."""
    ways = max(1, min(n, ways))
    base, extra = divmod(n, ways)
    parts, offset = [], 0
    for i in range(ways):
        count = base + (1 if i < extra else 0)
        parts.append(Part(offset, count))
        offset += count
    return parts


def idle_nodes(services: RouterServices, model: str) -> int:
    return sum(1 for n in services.nodes.candidates(model, FLAGS) if n.free > 0)


def _decode(result: UpstreamResult) -> ImagesResponse:
    try:
        return _response_decoder.decode(result.content)
    except msgspec.DecodeError as exc:
        raise OpenAIError(
            502,
            f"Node sent an unreadable images response: {exc}",
            type="server_error",
            code="bad_upstream_response",
        ) from None


def plan_parts(services: RouterServices, model: str, n: int, *, fan_out: bool) -> list[Part]:
    """Split ``n`` images over the idle nodes serving ``model`` (one part when not fanning out)."""
    return split(n, idle_nodes(services, model) if fan_out and n > 1 else 1)


async def run_parts(
    services: RouterServices,
    *,
    model: str,
    path: str,
    parts: list[Part],
    build: Callable[[Part], tuple[bytes, str]],
) -> list[UpstreamResult]:
    """Send every part (concurrently, each with its own balancing and failover), in order."""

    async def one(part: Part) -> UpstreamResult:
        content, content_type = build(part)
        return await services.call_node(model, FLAGS, path, content=content, content_type=content_type)

    return list(await asyncio.gather(*(one(p) for p in parts)))


def to_response(
    results: list[UpstreamResult],
    *,
    response_format: str,
    store: ImageUrlStore,
    base_url: str,
    extra_headers: dict[str, str] | None = None,
) -> Response[Any]:
    """Merge part results into one OpenAI images response (or pass a node error through)."""
    headers: dict[str, str] = dict(extra_headers or {})
    for result in results:
        headers.update(result.headers)
        if result.status != 200:
            return Response(
                content=result.content,
                status_code=result.status,
                media_type=result.content_type,
                headers=headers,
            )
    headers["x-llmlb-node"] = ",".join(dict.fromkeys(r.node_id for r in results))
    merged = [_decode(r) for r in results]
    first = merged[0]
    data: list[ImageData] = [d for m in merged for d in m.data]
    if response_format == "url":
        extension = first.output_format or "png"
        data = [
            ImageData(
                url=f"{base_url}{FILES_PATH}/{store.save(base64.b64decode(d.b64_json or ''), extension)}",
                revised_prompt=d.revised_prompt,
                seed=d.seed,
            )
            for d in data
        ]
    body = ImagesResponse(
        created=int(time.time()),
        data=data,
        size=first.size,
        quality=first.quality,
        output_format=first.output_format,
        background=first.background,
    )
    return Response(content=msgspec.json.encode(body), media_type="application/json", headers=headers)
