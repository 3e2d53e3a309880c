"""Images served by ``response_format=url``: stored in the images capability's data dir with an
unguessable name, served at ``/v1/images/files/<name>`` without a key (like OpenAI's signed
URLs), and deleted from disk when their lifetime ends (a purge task the store starts and stops
itself, from the capability's start-up and shut-down callbacks).

A file is served as what it is and nothing more: its image type, :data:`FILE_POLICY` (it loads
nothing and runs nothing: opened on its own, it is an image in a sandbox, never a page of the
router's origin), and ``content-disposition: inline`` with its own name (the router's request
log adds ``nosniff`` to every answer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from pathlib import Path

log = logging.getLogger("llmlb.images.urls")

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{43}\.(png|jpeg|webp)$")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# A stored file loads nothing, runs nothing, and is no page of the router's origin; the inline
# styles are the browser's own for showing an image on its own.
FILE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


class ImageUrlStore:
    def __init__(self, directory: Path, ttl_s: float) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        directory.mkdir(parents=True, exist_ok=True)
        self._purge: asyncio.Task[None] | None = None

    def save(self, data: bytes, extension: str) -> str:
        """Store ``data``; return the file name (43 random url-safe chars + extension)."""
        if extension not in MEDIA_TYPES:  # the name must stay one that path() serves
            raise ValueError(f"not an image file extension: {extension!r}")
        name = f"{secrets.token_urlsafe(32)}.{extension}"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)
        return name

    def path(self, name: str) -> Path | None:
        """The file for ``name`` if the name is well-formed, present and not expired."""
        if not NAME_RE.match(name):
            return None
        path = self.directory / name
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return path

    def purge_expired(self) -> int:
        now = time.time()
        removed = 0
        for path in self.directory.iterdir():
            try:
                if now - path.stat().st_mtime > self.ttl_s:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("deleted %d expired image file(s)", removed)
        return removed

    async def purge_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.purge_expired)

    async def start_purging(self) -> None:
        """Delete expired files in the background (a quarter of their lifetime apart, 1-60 s)."""
        interval = min(60.0, max(1.0, self.ttl_s / 4))
        self._purge = asyncio.create_task(self.purge_forever(interval), name="llmlb-images-purge")

    async def stop_purging(self) -> None:
        task, self._purge = self._purge, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
