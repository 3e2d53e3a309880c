"""What an upstream's answer may be (content types), and a whole answer as read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar import Response

# What a whole answer read as JSON must be.
JSON_TYPES = ("application/json",)
# What a relayed answer may be by default (server-sent events, or JSON from a server that does
# not stream).
STREAM_TYPES = ("text/event-stream", "application/json")
# Relayed answers that are documents, not streams (:meth:`Forwarder.stream` reads them whole).
DOCUMENT_TYPES = ("application/json", "text/plain", "text/vtt", "text/srt", "application/x-subrip")
# What an answer read as events (:meth:`Forwarder.events`) must be.
EVENT_STREAM_TYPES = ("text/event-stream",)


@dataclass
class UpstreamResult:
    """A node's whole answer (:meth:`Forwarder.call <llmlb_core.capability.Forwarder.call>`)."""

    status: int
    content: bytes
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)  # for the client (queue info)
    parsed: Any = None  # what call's ``check`` made of a 2xx answer

    def to_response(self) -> Response[bytes]:
        """The answer as the client gets it, with the node named in ``x-llmlb-node``; its content
        type as the node sent it (a header: see ``relay.passed_headers``)."""
        headers = {**self.headers, "x-llmlb-node": self.node_id}
        if self.content_type:
            headers["content-type"] = self.content_type
        return Response(
            content=self.content, status_code=self.status, media_type=self.content_type, headers=headers
        )
