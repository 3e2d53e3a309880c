"""A node's answer to an image job: read within a bound, checked, and merged into the client's.

A node's answer is untrusted input. It is read up to a bound set by the size (for ``auto``, the
model's advertised native size) and the number of images asked for (:func:`answer_limit`),
then decoded strictly (:func:`read_answer`): the images schema and nothing else, exactly the
images asked for, each one valid base64 (decoded by msgspec, which refuses any other character,
bad padding or a bad length) that is one file of the announced ``output_format`` (png, jpeg or
webp, the only file extensions ever written), from its signature to its end with nothing after
it (:func:`check_image`). An answer that fails any of this is a 502 ``bad_upstream_response``,
the node is marked suspect and the part is tried on another node (the forwarder's failover). A
node's 4xx reaches the client OpenAI-shaped. The parts' answers are merged into one OpenAI
images response (:func:`merge`), their images stored as files when the client asked for
``url``; a single part answered in ``b64_json`` is passed on as the node's bytes, once every one
of them has been checked.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Response

from llmlb_core.api import BadAnswer, UpstreamResult
from llmlb_plugins.images.file_layout import check_file
from llmlb_plugins.images.model_info import MAX_SIDE
from llmlb_plugins.images.protocol import (
    SIZE_AUTO,
    SIZES,
    Background,
    OutputFormat,
    Prompt,
    Quality,
    parse_size,
)
from llmlb_plugins.images.url_store import ImageUrlStore

FILES_PATH = "/v1/images/files"

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


def answer_limit(size: str, count: int, native_size: tuple[int, int] | None = None) -> int:
    """Most bytes a node's answer of ``count`` images of ``size`` can take: every pixel as RGBA
    (more than any PNG, JPEG or WebP of it), in base64, plus room for the rest. ``auto`` counts
    as the model's advertised ``native_size`` (at most ``MAX_SIDE`` a side), or when none is
    known as the largest supported size."""
    if size != SIZE_AUTO:
        width, height = parse_size(size)
    elif native_size is not None:
        width, height = min(native_size[0], MAX_SIDE), min(native_size[1], MAX_SIDE)
    else:
        width, height = max((parse_size(s) for s in SIZES), key=lambda wh: wh[0] * wh[1])
    per_image = width * height * 4 * 4 // 3 + _PER_IMAGE_OVERHEAD
    return count * per_image + _ANSWER_OVERHEAD


def check_image(data: bytes, output_format: str) -> None:
    """``BadAnswer`` unless ``data`` is one image file of ``output_format`` (png, jpeg, webp),
    from its signature to its end marker with nothing after it (:mod:`.file_layout`)."""
    try:
        check_file(data, output_format)
    except ValueError as exc:
        raise BadAnswer(f"an image that is not one {output_format!r} file: {exc}") from None


def read_answer(content: bytes, *, count: int) -> NodeAnswer:
    """A node's answer to a part of ``count`` images, checked (see the module doc)."""
    try:
        answer = _answer_decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadAnswer(f"not an images response: {exc}") from None
    if len(answer.data) != count:
        raise BadAnswer(f"{len(answer.data)} image(s) where {count} were asked for")
    for image in answer.data:
        if image.b64_json is None or image.url is not None:
            raise BadAnswer("an image without b64_json")
        check_image(image.b64_json, answer.output_format or "png")
    return answer


async def merge(
    results: list[UpstreamResult],
    *,
    response_format: str,
    store: ImageUrlStore,
    base_url: str,
    extra_headers: dict[str, str] | None = None,
) -> Response[Any]:
    """Merge checked part results into one OpenAI images response, or answer a node's error
    (OpenAI-shaped by the forwarder)."""
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
                url=f"{base_url}{FILES_PATH}/{await store.save(d.b64_json or b'', extension)}",
                revised_prompt=d.revised_prompt,
                seed=d.seed,
            )
            for d in data
        ]
    body = msgspec.structs.replace(first, created=int(time.time()), data=data)
    return Response(content=msgspec.json.encode(body), media_type="application/json", headers=headers)
