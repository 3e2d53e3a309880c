"""The audio plugin's settings: the ``[plugin.audio]`` table of the router config.

Environment: ``LLMLB_PLUGIN__AUDIO__<KEY>`` (e.g. ``LLMLB_PLUGIN__AUDIO__MAX_UPLOAD_BYTES=...``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from llmlb_core.settings import load_plugin_settings

MB = 1024 * 1024


class AudioSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Largest audio file accepted by transcriptions and translations (OpenAI's limit: 25 MB).
    max_upload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * MB


def load_audio_settings(table: dict[str, Any]) -> AudioSettings:
    return load_plugin_settings("audio", table, AudioSettings)
