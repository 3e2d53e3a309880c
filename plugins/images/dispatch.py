"""Sending an image job to nodes: seed resolution, fan-out of ``n`` over idle nodes, merging,
and turning the nodes' base64 images into stored URLs when the client asked for ``url``.

A job of ``n`` images with seed ``s`` yields images with seeds ``s, s+1, ..., s+n-1`` no matter
how it is split: part ``k`` covering images ``[i, i+c)`` is sent with seed ``s+i`` and ``n=c``,
and stable-diffusion.cpp's batch gives image ``j`` of a part the seed ``seed + j``.

A node's answer is untrusted input. It is read up to a bound set by the size and the number of
images asked for (:func:`answer_limit`), then decoded strictly (:func:`read_answer`): the
images schema and nothing else, exactly the images asked for, each one valid base64 (decoded by
msgspec, which refuses any other character, bad padding or a bad length) whose bytes start as
the announced ``output_format`` (png, jpeg or webp, the only file extensions ever written). An
answer that fails any of this is a 502 ``bad_upstream_response``, the node is marked suspect and
the part is tried on another node (``RouterServices.call_node``). A node's 4xx reaches the
client OpenAI-shaped. A single part answered in ``b64_json`` is passed on as the node's bytes,
once every one of them has been checked.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Response

from llmlb_core.services import RouterServices, UpstreamResult
from llmlb_core.upstream import BadAnswer
from llmlb_plugins.images.protocol import (
    MAX_SEED,
    SIZE_AUTO,
    SIZES,
    Background,
    OutputFormat,
    Prompt,
    Quality,
    parse_size,
)
from llmlb_plugins.images.url_store import ImageUrlStore

FLAGS = frozenset({"image_generation"})
FILES_PATH = "/v1/images/files"

# How each output format's files begin (what a node's image bytes must start with).
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}
# Room per image for what is not pixels (JSON, revised_prompt, file headers), and for the rest.
_PER_IMAGE_OVERHEAD = 256 * 1024
_ANSWER_OVERHEAD = 64 * 1024


class NodeImage(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One image of a node's answer (``b64_json`` decoded) or of the router's (``url``)."""

    b64_json: bytes | None = None
    url: str | None = None
    revised_prompt: Prompt | None = None
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None


class NodeAnswer(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The images response as the router reads it from a node and writes it to the client:
    ``llmlb_plugins.images.protocol.ImagesResponse`` with the base64 decoded and every value bounded."""

    created: int
    data: list[NodeImage]
    size: Annotated[str, msgspec.Meta(pattern=r"^\d{1,5}x\d{1,5}\Z")] | None = None
    quality: Quality | None = None
    output_format: OutputFormat | None = None
    background: Background | None = None


_answer_decoder = msgspec.json.Decoder(NodeAnswer)


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


def answer_limit(size: str, count: int) -> int:
    """Most bytes a node's answer of ``count`` images of ``size`` can take: every pixel as RGBA
    (more than any PNG, JPEG or WebP of it), in base64, plus room for the rest. ``auto`` (the
    model's native size) counts as the largest supported size."""
    width, height = max((parse_size(s) for s in SIZES), key=lambda wh: wh[0] * wh[1])
    if size != SIZE_AUTO:
        width, height = parse_size(size)
    per_image = width * height * 4 * 4 // 3 + _PER_IMAGE_OVERHEAD
    return count * per_image + _ANSWER_OVERHEAD


def read_answer(content: bytes, *, count: int) -> NodeAnswer:
    """A node's answer to a part of ``count`` images, checked (see the module doc)."""
    try:
        answer = _answer_decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadAnswer(f"not an images response: {exc}") from None
    if len(answer.data) != count:
        raise BadAnswer(f"{len(answer.data)} image(s) where {count} were asked for")
    magic = _MAGIC[answer.output_format or "png"]
    for image in answer.data:
        if image.b64_json is None or image.url is not None:
            raise BadAnswer("an image without b64_json")
        if not image.b64_json.startswith(magic):
            raise BadAnswer(f"an image that is not {answer.output_format or 'png'}")
    return answer


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
    size: str,
) -> list[UpstreamResult]:
    """Send every part (concurrently, each with its own balancing and failover), in order.
    A 2xx result holds the checked :class:`NodeAnswer` in ``parsed``."""

    async def one(part: Part) -> UpstreamResult:
        content, content_type = build(part)
        return await services.call_node(
            model,
            FLAGS,
            path,
            content=content,
            content_type=content_type,
            max_answer_bytes=answer_limit(size, part.count),
            check=functools.partial(read_answer, count=part.count),
        )

    return list(await asyncio.gather(*(one(p) for p in parts)))


def to_response(
    results: list[UpstreamResult],
    *,
    response_format: str,
    store: ImageUrlStore,
    base_url: str,
    extra_headers: dict[str, str] | None = None,
) -> Response[Any]:
    """Merge checked part results (:func:`run_parts`) into one OpenAI images response, or answer
    a node's error (OpenAI-shaped by ``call_node``)."""
    headers: dict[str, str] = dict(extra_headers or {})
    for result in results:
        headers.update(result.headers)
        if not 200 <= result.status < 300:
            return Response(
                content=result.content,
                status_code=result.status,
                media_type="application/json",
                headers=headers,
            )
    headers["x-llmlb-node"] = ",".join(dict.fromkeys(r.node_id for r in results))
    if len(results) == 1 and response_format == "b64_json":  # every byte was checked: pass it on
        return Response(content=results[0].content, media_type="application/json", headers=headers)
    merged: list[NodeAnswer] = [r.parsed for r in results]
    first = merged[0]
    data = [d for m in merged for d in m.data]
    if response_format == "url":
        extension = first.output_format or "png"
        data = [
            NodeImage(
                url=f"{base_url}{FILES_PATH}/{store.save(d.b64_json or b'', extension)}",
                revised_prompt=d.revised_prompt,
                seed=d.seed,
            )
            for d in data
        ]
    body = msgspec.structs.replace(first, created=int(time.time()), data=data)
    return Response(content=msgspec.json.encode(body), media_type="application/json", headers=headers)
