"""The images plugin's own settings: the ``[plugin.images]`` table of the router config, parsed
once by the router into :class:`ImagesSettings` (``Capability.settings``).

Environment: ``LLMLB_PLUGIN__IMAGES__<KEY>`` (e.g. ``LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK=true``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MB = 1024 * 1024


class ImagesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Map an unsupported `size` to the nearest supported one instead of answering 400.
    size_fallback: bool = False
    # Lifetime of images served by `response_format=url`, then deleted (from disk, or from the
    # routers' shared table on PostgreSQL).
    url_ttl_minutes: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Format used when a request does not name one (OpenAI's dall-e default is "url").
    default_response_format: str = "url"
    # Model used when a request names none (None: the only image model online, if just one).
    default_model: str | None = None
    # Upload limits for edits and variations: bytes of one file, pixels of one image.
    max_upload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 4 * MB
    max_pixels: Annotated[int, msgspec.Meta(gt=0)] = 4096 * 4096
    # Pixels of all images and the mask of one request together, read from their headers before
    # anything is decoded (a 400 above it). Default: four images at the max_pixels limit.
    max_request_pixels: Annotated[int, msgspec.Meta(gt=0)] = 4 * 4096 * 4096
    # Images decoded at once (on worker threads, off the event loop), across all requests. Each
    # decode holds up to 4 bytes per pixel while it runs, so this bounds the memory that
    # decoding takes: about 2 x 64 MiB at the defaults.
    max_concurrent_decodes: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Split `n > 1` over idle nodes serving the same model.
    fan_out: bool = True
