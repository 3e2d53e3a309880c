"""Streamed image jobs (``stream: true`` on generations and edits): the nodes' events, checked,
relayed and merged into one server-sent event stream for the client.

The job is planned and split as a buffered one (``planning``): each part (one per idle node with
``fan_out``) is sent with ``stream: true`` and ``partial_images`` through
``context.forward.events``, all parts at once. The client's response starts once every part's
first event is in and checked, so anything that goes wrong before that (no node, a node's 4xx
such as an unknown LoRA, every node failing) is an ordinary JSON error with its status; a node
that fails before its first event is replaced by another (the forwarder's failover).

Every event of a node is untrusted (:class:`PartCheck`): the schema, decoded strictly and
bounded (:class:`NodeStreamEvent`); the event type of the endpoint (``image_generation.*`` or
``image_edit.*``) in the ``event:`` line and in the data; ``image_index`` within the part; for
each image at most ``partial_images`` partial events, in increasing ``partial_image_index``
order, then exactly one completed event (with ``usage``), nothing after it; valid base64 that
is one whole file of the requested ``output_format`` (``answers.check_image``); the requested size
(for ``auto``: a size of at most ``MAX_SIDE`` a side); each event within the bound of one image
(``answers.answer_limit``), the whole stream within that of all its events. When the stream
ends, every image of the part must have had its completed event.

A checked event is sent on as soon as it is in, its ``image_index`` moved by the part's offset
(and always written, 0 too), so the images of the job are numbered ``0..n-1`` and parts
interleave. The stream ends after
every part's last completed event. After the first byte to the client nothing is retried: a
part that breaks off, sends an event that fails its checks or reports an ``error`` ends the
client's stream with one ``error`` event (``{"type": "error", "error": {...}}``, which the
official SDK raises as ``APIError``), and the node is marked suspect. A client that leaves
closes every part's upstream response, and the nodes cancel their jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import msgspec
from litestar import Response

from llmlb_core.api import (
    SSE_HEADERS,
    BadAnswer,
    CapabilityContext,
    EventStream,
    OpenAIError,
    RelayStream,
    SSEEvent,
    error_event,
    format_event,
    note_request,
)
from llmlb_plugins.images.answers import answer_limit, check_image
from llmlb_plugins.images.model_info import FLAGS, MAX_SIDE
from llmlb_plugins.images.planning import JobPlan, Part
from llmlb_plugins.images.protocol import (
    MAX_N,
    MAX_PARTIAL_IMAGES,
    MAX_SEED,
    Background,
    ImageStreamEvent,
    ImageUsage,
    OutputFormat,
    Quality,
    stream_event_types,
)
from llmlb_plugins.images.settings import ImagesSettings

log = logging.getLogger("llmlb.images")

MEDIA_TYPE = "text/event-stream"
EventType = Literal[
    "image_generation.partial_image",
    "image_generation.completed",
    "image_edit.partial_image",
    "image_edit.completed",
]


class NodeStreamEvent(ImageStreamEvent, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``protocol.ImageStreamEvent`` as the router reads it from a node: every value bounded and
    the base64 decoded (msgspec refuses any other character, bad padding or a bad length)."""

    type: EventType
    b64_json: bytes  # type: ignore[assignment]
    created_at: Annotated[int, msgspec.Meta(ge=0, le=2**40)]
    size: Annotated[str, msgspec.Meta(pattern=r"^\d{1,5}x\d{1,5}\Z")]
    quality: Quality  # type: ignore[assignment]
    background: Background  # type: ignore[assignment]
    output_format: OutputFormat  # type: ignore[assignment]
    partial_image_index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_PARTIAL_IMAGES)] | None = None
    usage: ImageUsage | None = None
    image_index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_N)] = 0
    seed: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEED + MAX_N)] | None = None


_event_decoder = msgspec.json.Decoder(NodeStreamEvent)
# What the parts' pumps hand the merged stream: an event, a part's failure, or None (part done).
Queue = asyncio.Queue[bytes | BaseException | None]


@dataclass(frozen=True)
class StreamSpec:
    """What every event of a job must match."""

    edit: bool
    partial_images: int
    output_format: str
    size: str | None  # None: ``auto`` (any size up to MAX_SIDE a side)

    @property
    def types(self) -> tuple[str, str]:
        return stream_event_types(self.edit)


@dataclass
class PartCheck:
    """The checks of one part's event stream (see the module doc); a fresh one per attempt.
    ``event`` returns the bytes the client gets."""

    spec: StreamSpec
    part: Part
    last_partial: list[int] = field(init=False)
    completed: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.last_partial = [-1] * self.part.count
        self.completed = [False] * self.part.count

    def event(self, sse: SSEEvent) -> bytes:
        partial_type, completed_type = self.spec.types
        if sse.event not in (partial_type, completed_type):
            raise BadAnswer(
                f"an event of type {sse.event[:64]!r} (expected {partial_type} or {completed_type})"
            )
        try:
            event = _event_decoder.decode(sse.data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadAnswer(f"not an image stream event: {exc}") from None
        if event.type != sse.event:
            raise BadAnswer(f"an event named {sse.event} whose data says {event.type}")
        index = event.image_index
        if index >= self.part.count:
            raise BadAnswer(f"image_index {index} in a part of {self.part.count} image(s)")
        if self.completed[index]:
            raise BadAnswer(f"an event for image {index} after its completed event")
        if event.type == partial_type:
            partial = event.partial_image_index
            if partial is None or event.usage is not None:
                raise BadAnswer("a partial image event without partial_image_index, or with usage")
            if partial >= self.spec.partial_images or partial <= self.last_partial[index]:
                raise BadAnswer(
                    f"partial image {partial} of image {index} (partial_images={self.spec.partial_images}, "
                    f"last one sent: {self.last_partial[index]})"
                )
            self.last_partial[index] = partial
        else:
            if event.usage is None or event.partial_image_index is not None:
                raise BadAnswer("a completed event without usage, or with partial_image_index")
            self.completed[index] = True
            note_request(images=1)
        if event.output_format != self.spec.output_format:
            raise BadAnswer(
                f"output_format {event.output_format} where {self.spec.output_format} was asked for"
            )
        self._check_size(event.size)
        check_image(event.b64_json, event.output_format)
        data = msgspec.to_builtins(event)  # the base64 as the node sent it, checked
        data["image_index"] = index + self.part.offset  # always written, 0 too
        return format_event(event.type, msgspec.json.encode(data))

    def _check_size(self, size: str) -> None:
        if self.spec.size is not None:
            if size != self.spec.size:
                raise BadAnswer(f"an image of size {size} where {self.spec.size} was asked for")
            return
        width, _, height = size.partition("x")
        if not (0 < int(width) <= MAX_SIDE and 0 < int(height) <= MAX_SIDE):
            raise BadAnswer(f"an image of size {size} (at most {MAX_SIDE}x{MAX_SIDE})")

    def end(self) -> None:
        missing = [i for i, done in enumerate(self.completed) if not done]
        if missing:
            raise BadAnswer(f"the stream ended before the completed event of image(s) {missing}")


def _error_bytes(exc: BaseException) -> bytes:
    """The ``error`` event that ends the client's stream."""
    if isinstance(exc, OpenAIError):
        return error_event(exc.message, code=exc.code or "upstream_error", type=exc.type, param=exc.param)
    log.error("streamed image job failed: %r", exc, exc_info=exc)
    return error_event("Internal server error", code="internal_error")


class MergedEvents:
    """The parts' checked events as one stream, in the order they arrive (each part pumped by a
    task of its own into a small queue: a slow client slows the nodes' reads, nothing piles up).
    Closing it (the client left, or the stream is over) cancels the pumps and closes every part."""

    def __init__(self, streams: list[EventStream[bytes]]) -> None:
        self.streams = streams
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def _pump(
        self, stream: EventStream[bytes], queue: asyncio.Queue[bytes | BaseException | None]
    ) -> None:
        try:
            async for chunk in stream:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # a NodeFailure (the node is suspect already), or a bug
            await queue.put(exc)
        finally:
            await stream.aclose()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        queue: Queue = asyncio.Queue(maxsize=2 * len(self.streams))
        self._tasks = [asyncio.create_task(self._pump(s, queue)) for s in self.streams]
        running = len(self._tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    yield _error_bytes(item)
                    return
                else:
                    yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)
            for stream in self.streams:
                await stream.aclose()


async def open_all(openers: list[Callable[[], Awaitable[EventStream[bytes]]]]) -> list[EventStream[bytes]]:
    """Open every part at once; when one fails (or the client leaves), close the others and
    raise the first failure as it is (a node's 4xx, ``no_capable_nodes``, ...)."""
    opened: list[EventStream[bytes]] = []

    async def open_one(opener: Callable[[], Awaitable[EventStream[bytes]]]) -> None:
        opened.append(await opener())

    try:
        async with asyncio.TaskGroup() as group:
            for opener in openers:
                group.create_task(open_one(opener))
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            for stream in opened:
                await stream.aclose()
        if isinstance(exc, BaseExceptionGroup):
            raise exc.exceptions[0] from None
        raise
    return opened


async def run_streamed(
    context: CapabilityContext[ImagesSettings],
    plan: JobPlan[Any],
    parts: list[Part],
    path: str,
    build: Callable[[Part], tuple[bytes, str]],
    *,
    edit: bool,
) -> Response[Any]:
    """Send every part of ``plan`` as a streamed request and answer the merged event stream."""
    request = plan.request
    partial_images = request.partial_images or 0
    spec = StreamSpec(
        edit=edit,
        partial_images=partial_images,
        output_format=request.output_format or "png",
        size=None if plan.size == "auto" else plan.size,
    )
    native = plan.info.native_size
    max_event_bytes = answer_limit(plan.size, 1, native)

    def opener(part: Part) -> Callable[[], Awaitable[EventStream[bytes]]]:
        content, content_type = build(part)
        return lambda: context.forward.events(
            plan.model,
            FLAGS,
            path,
            content=content,
            content_type=content_type,
            check=lambda: PartCheck(spec, part),
            max_event_bytes=max_event_bytes,
            max_answer_bytes=answer_limit(plan.size, part.count * (partial_images + 1), native),
        )

    streams = await open_all([opener(part) for part in parts])
    headers: dict[str, str] = {}
    for stream in streams:
        headers.update(stream.headers)
    headers["x-llmlb-node"] = ",".join(dict.fromkeys(s.node_id for s in streams))
    if plan.replaced_size:
        headers["x-llmlb-size-replaced"] = f"{plan.replaced_size}->{plan.size}"
    headers.update(SSE_HEADERS)
    return RelayStream(MergedEvents(streams), status_code=200, media_type=MEDIA_TYPE, headers=headers)
