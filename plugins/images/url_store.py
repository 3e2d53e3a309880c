"""Images served by ``response_format=url``: stored with an unguessable name, served at
``/v1/images/files/<name>`` without a key (like OpenAI's signed URLs), and gone when their
lifetime ends.

Where they are kept (one interface, :class:`ImageUrlStore`, over one of two backends):

- one router (SQLite, ``context.shared`` is None): files in the images capability's data dir,
  deleted from disk by a purge task the store starts and stops itself (from the capability's
  start-up and shut-down callbacks), and served from disk;
- several routers (PostgreSQL): the router's shared table (``context.shared``, namespace
  ``images``), so a URL that one router returned is served by every router until it expires;
  the router purges expired rows.

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
from typing import Protocol

from llmlb_core.api import SharedBlobs

log = logging.getLogger("llmlb.images.urls")

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{43}\.(png|jpeg|webp)$")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# A stored file loads nothing, runs nothing, and is no page of the router's origin; the inline
# styles are the browser's own for showing an image on its own.
FILE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
# The namespace of the images in the routers' shared table.
NAMESPACE = "images"


class ImageFiles(Protocol):
    """Where the files are: a directory (:class:`DirectoryFiles`) or the routers' shared table
    (:class:`SharedFiles`). Names reach it checked (well-formed, unguessable)."""

    async def write(self, name: str, data: bytes) -> None: ...

    async def read(self, name: str) -> Path | bytes | None:
        """The file (a path to serve from disk, or its bytes), or None: absent or expired."""
        ...

    async def start_purging(self) -> None: ...

    async def stop_purging(self) -> None: ...


class DirectoryFiles:
    """Files in ``directory``, each deleted ``ttl_s`` after it was written (one router)."""

    def __init__(self, directory: Path, ttl_s: float) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        directory.mkdir(parents=True, exist_ok=True)
        self._purge: asyncio.Task[None] | None = None

    async def write(self, name: str, data: bytes) -> None:
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)

    async def read(self, name: str) -> Path | None:
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


class SharedFiles:
    """Files in the routers' shared table, each expiring ``ttl_s`` after it was written (the
    router purges expired rows: nothing to start here)."""

    def __init__(self, shared: SharedBlobs, ttl_s: float) -> None:
        self._shared = shared
        self.ttl_s = ttl_s

    async def write(self, name: str, data: bytes) -> None:
        await self._shared.put(NAMESPACE, name, data, self.ttl_s)

    async def read(self, name: str) -> bytes | None:
        return await self._shared.get(NAMESPACE, name)

    async def start_purging(self) -> None:
        pass

    async def stop_purging(self) -> None:
        pass


class ImageUrlStore:
    """Names the files and checks names; ``shared`` (the context's): kept there, else in
    ``directory``."""

    def __init__(self, directory: Path, ttl_s: float, shared: SharedBlobs | None = None) -> None:
        self.ttl_s = ttl_s
        self.files: ImageFiles = (
            DirectoryFiles(directory, ttl_s) if shared is None else SharedFiles(shared, ttl_s)
        )

    async def save(self, data: bytes, extension: str) -> str:
        """Store ``data``; return the file name (43 random url-safe chars + extension)."""
        if extension not in MEDIA_TYPES:  # the name must stay one that find() serves
            raise ValueError(f"not an image file extension: {extension!r}")
        name = f"{secrets.token_urlsafe(32)}.{extension}"
        await self.files.write(name, data)
        return name

    async def find(self, name: str) -> Path | bytes | None:
        """The file for ``name`` (a path on disk, or its bytes) if the name is well-formed and the
        file present and not expired."""
        if not NAME_RE.match(name):
            return None
        return await self.files.read(name)

    async def start_purging(self) -> None:
        await self.files.start_purging()

    async def stop_purging(self) -> None:
        await self.files.stop_purging()
