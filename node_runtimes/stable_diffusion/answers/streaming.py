"""A job's images as a streamed answer (``stream: true``): events as the engine makes them.

- The engine calls the job's listener: preview frames on its worker thread (handed to the event
  loop with ``loop.call_soon_threadsafe``), completed images on the event loop; both go into an
  ``asyncio.Queue``. The answer takes them in order and encodes each on a worker thread (a
  1024x1024 PNG takes a while), never on the event loop.
- The response starts with the first event. Until then a failure (an unknown LoRA is refused
  earlier; a model that cannot load, a failed generation) is an ordinary JSON error answer;
  after it, an ``error`` event that ends the stream.
- The job runs in its own task. When the answer ends early (its client left: Litestar stops the
  stream; before the first event, the node's DisconnectMiddleware cancels the handler), the job
  is cancelled, which stops it after the image in progress, and the answer waits for that, so
  the request ends when the engine is free again (the node then heartbeats at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
from litestar.response import Stream
from PIL import Image

from llmlb_node.api import OpenAIError
from llmlb_node.stable_diffusion.answers.events import MEDIA_TYPE, StreamFormat, error_event

log = logging.getLogger("llmlb.node.sd")

# (image, is a preview) -> base64 of the encoded image; runs on a worker thread.
Encoder = Callable[[Image.Image, bool], str]


@dataclass(frozen=True)
class Partial:
    image_index: int
    partial_index: int
    frame: Image.Image


@dataclass(frozen=True)
class Completed:
    image_index: int
    image: Image.Image


class Finished:
    """The job's task ended (its result or error is the task's)."""


Item = Partial | Completed | Finished


class QueuedEvents:
    """A :class:`~llmlb_node.stable_diffusion.jobs.job.JobListener` that queues what it hears."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue()

    def partial(self, image_index: int, partial_index: int, frame: Image.Image) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the node is stopping
            self.loop.call_soon_threadsafe(self.queue.put_nowait, Partial(image_index, partial_index, frame))

    def completed(self, image_index: int, image: Image.Image) -> None:
        self.queue.put_nowait(Completed(image_index, image))


async def stop_job(task: asyncio.Task[object]) -> None:
    """Cancel the job and wait until it has ended (after the image in progress), shielded from
    the cancellation of the waiter itself."""
    if not task.done():
        task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: a failure after the client left is no one's to report


def _as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    log.error("streamed job failed: %r", exc, exc_info=exc)
    return OpenAIError(500, "The image job failed on the node", type="server_error", code="generation_failed")


class ImageStream:
    """One streamed answer: the job's task, its queue and how events are written."""

    def __init__(
        self,
        run: Callable[[QueuedEvents], Awaitable[object]],
        fmt: StreamFormat,
        encode: Encoder,
    ) -> None:
        self.events = QueuedEvents(asyncio.get_running_loop())
        self.fmt = fmt
        self.encode = encode
        self.task: asyncio.Task[object] = asyncio.ensure_future(run(self.events))
        self.task.add_done_callback(lambda _: self.events.queue.put_nowait(Finished()))

    async def _next(self) -> bytes | None:
        """The next event, encoded; None when the job has ended."""
        item = await self.events.queue.get()
        if isinstance(item, Partial):
            b64 = await asyncio.to_thread(self.encode, item.frame, True)
            return self.fmt.partial(b64, item.image_index, item.partial_index)
        if isinstance(item, Completed):
            b64 = await asyncio.to_thread(self.encode, item.image, False)
            return self.fmt.completed(b64, item.image_index)
        return None

    async def response(self) -> Stream:
        """The answer, once the first event is there (a failure before it is raised)."""
        try:
            first = await self._next()
        except BaseException:
            await stop_job(self.task)
            raise
        if first is None:
            self.task.result()  # raises the job's error
            raise OpenAIError(500, "The image job ended without an image", type="server_error")
        return Stream(self._body(first), media_type=MEDIA_TYPE, headers={"cache-control": "no-cache"})

    async def _body(self, first: bytes) -> AsyncIterator[bytes]:
        try:
            yield first
            try:
                while (event := await self._next()) is not None:
                    yield event
                failure = None if self.task.cancelled() else self.task.exception()
            except Exception as exc:  # an image that cannot be encoded
                failure = exc
            if failure is not None:
                yield error_event(_as_openai_error(failure))
        finally:
            await stop_job(self.task)
