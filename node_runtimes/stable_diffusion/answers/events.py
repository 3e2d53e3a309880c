"""The node's ``text/event-stream`` answer to ``stream: true`` (the wire the router reads).

For each image ``i`` of the job: up to ``partial_images`` events of the partial type, then one of
the completed type (types from :func:`stream_event_types`), each written as
``event: <type>\\ndata: <ImageStreamEvent json>\\n\\n``; then the stream ends (no ``[DONE]``). A
failure after the first event is ``event: error`` with ``{"type": "error", "error": {...}}``,
the OpenAI error object the official SDKs raise as ``APIError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from llmlb_node.api import OpenAIError
from llmlb_plugins.images.protocol import ImageStreamEvent, ImageUsage, stream_event_types

ERROR_EVENT = "error"
MEDIA_TYPE = "text/event-stream"


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event (``data`` is one line of JSON)."""
    return b"event: " + event.encode("ascii") + b"\ndata: " + data + b"\n\n"


def error_event(error: OpenAIError) -> bytes:
    return sse(ERROR_EVENT, msgspec.json.encode({"type": ERROR_EVENT, **error.body()}))


@dataclass(frozen=True)
class StreamFormat:
    """What every event of one answer repeats."""

    edit: bool
    size: str
    quality: str
    background: str
    output_format: str
    seed: int

    def partial(self, b64: str, image_index: int, partial_index: int) -> bytes:
        event_type = stream_event_types(self.edit)[0]
        return self._encode(event_type, b64, image_index, partial_image_index=partial_index)

    def completed(self, b64: str, image_index: int) -> bytes:
        event_type = stream_event_types(self.edit)[1]
        return self._encode(event_type, b64, image_index, usage=ImageUsage())

    def _encode(
        self,
        event_type: str,
        b64: str,
        image_index: int,
        *,
        partial_image_index: int | None = None,
        usage: ImageUsage | None = None,
    ) -> bytes:
        event = ImageStreamEvent(
            type=event_type,
            b64_json=b64,
            created_at=int(time.time()),
            size=self.size,
            quality=self.quality,
            background=self.background,
            output_format=self.output_format,
            partial_image_index=partial_image_index,
            usage=usage,
            image_index=image_index,
            seed=self.seed + image_index,
        )
        data = msgspec.to_builtins(event)
        data["image_index"] = image_index  # also 0, which the struct omits as its default
        return sse(event_type, msgspec.json.encode(data))
