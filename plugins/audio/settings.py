"""The audio plugin's settings: the ``[plugin.audio]`` table of the router config, parsed once
by the router into :class:`AudioSettings` (``Capability.settings``).

Environment: ``LLMLB_PLUGIN__AUDIO__<KEY>`` (e.g. ``LLMLB_PLUGIN__AUDIO__MAX_UPLOAD_BYTES=...``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MB = 1024 * 1024


class AudioSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Largest audio file accepted by transcriptions and translations (OpenAI's limit: 25 MB).
    max_upload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * MB
