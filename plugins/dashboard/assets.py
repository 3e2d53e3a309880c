"""The dashboard's static files (``static/``), read once at start-up and served from memory
under ``/dashboard/static/<name>``. Pages link them with a content hash (``?v=...``), so a
browser may cache them for long and still gets new ones after an upgrade."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

# Litestar adds "; charset=utf-8" to text/* types.
MEDIA_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # first hex digits of the content's SHA-256


def load_assets() -> dict[str, Asset]:
    folder = resources.files(__package__ or "llmlb_plugins.dashboard") / "static"
    assets: dict[str, Asset] = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in MEDIA_TYPES:
            body = item.read_bytes()
            assets[item.name] = Asset(body, MEDIA_TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])
    return assets


def asset_url(assets: dict[str, Asset], name: str) -> str:
    return f"/dashboard/static/{name}?v={assets[name].version}"
