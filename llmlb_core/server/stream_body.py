"""A request body forwarded to a node as the client sends it (an upload: never held whole), and
sent again to another node while what was read of it is kept (:class:`StreamBody`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

# How much of a relayed upload is kept while it is sent, so that it can be sent again to another
# node when the first one fails (a short transcription; a larger upload goes to one node).
RESEND_BYTES = 1024 * 1024


class StreamBody:
    """A request body forwarded as it arrives (never held whole in memory).

    While everything read from the source so far is at most ``keep_bytes``, it is kept, and the
    body can be sent again (:attr:`resendable`): the kept bytes, then the rest of the source.
    Past that, it can be sent once: a failed attempt cannot be retried elsewhere. ``started``
    tells whether a transport pulled any of it; ``error`` keeps what the source raised (e.g. an
    upload over its size limit), so the caller answers that instead of "upstream unreachable".
    """

    def __init__(self, source: AsyncIterable[bytes], *, keep_bytes: int = RESEND_BYTES) -> None:
        self._source = aiter(source)  # one iterator: a second attempt goes on where one stopped
        self._keep = keep_bytes
        self._kept: list[bytes] | None = []  # None: more was read than may be kept
        self._kept_size = 0
        self.started = False
        self.error: BaseException | None = None

    @property
    def resendable(self) -> bool:
        """Whether it can be sent (again): not started, or every byte read so far kept."""
        return self.error is None and (not self.started or self._kept is not None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not self.resendable:
            raise RuntimeError("this streamed request body cannot be sent again")
        self.started = True
        for chunk in list(self._kept or ()):
            yield chunk
        try:
            async for chunk in self._source:
                self._keep_chunk(chunk)
                yield chunk
        except Exception as exc:
            self.error = exc
            raise

    def _keep_chunk(self, chunk: bytes) -> None:
        if self._kept is None:
            return
        self._kept_size += len(chunk)
        if self._kept_size <= self._keep:
            self._kept.append(chunk)
        else:
            self._kept = None
