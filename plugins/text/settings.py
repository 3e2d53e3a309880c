"""The text plugin's settings: the ``[plugin.text]`` table of the router config.

Environment: ``LLMLB_PLUGIN__TEXT__<KEY>`` (e.g. ``LLMLB_PLUGIN__TEXT__MAX_BODY_BYTES=52428800``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from llmlb_core.settings import load_plugin_settings

MB = 1024 * 1024


class TextSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Largest JSON body on the text routes (chat messages may carry base64 images).
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 32 * MB


def load_text_settings(table: dict[str, Any]) -> TextSettings:
    return load_plugin_settings("text", table, TextSettings)
