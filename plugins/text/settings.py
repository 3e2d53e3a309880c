"""The text plugin's settings: the ``[plugin.text]`` table of the router config, parsed once by
the router into :class:`TextSettings` (``Capability.settings``).

Environment: ``LLMLB_PLUGIN__TEXT__<KEY>`` (e.g. ``LLMLB_PLUGIN__TEXT__MAX_BODY_BYTES=52428800``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MB = 1024 * 1024


class TextSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Largest JSON body on the text routes (chat messages may carry base64 images).
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 32 * MB
