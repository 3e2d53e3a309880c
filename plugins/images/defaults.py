"""Per-model defaults an admin may set for an image model (``POST /v0/models``).

They fill the request fields a client left out (``llmlb_plugins.images.dispatch``), so they are checked
against this schema when the admin sets them: a bad value or an unknown key is a 400 then, not
an error for the user whose request would have used it. The routing field (``model``) and the
streaming fields (``stream``, ``partial_images``: how a client reads its answer) cannot be
defaulted.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from llmlb_plugins.images.protocol import (
    SIZE_AUTO,
    SIZES,
    Background,
    Compression,
    EngineExtras,
    OutputFormat,
    Quality,
    ResponseFormat,
    Style,
)

SizeName = Annotated[
    str, msgspec.Meta(pattern="^(?:" + "|".join(re.escape(s) for s in (*SIZES, SIZE_AUTO)) + ")$")
]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]


class ImageModelDefaults(EngineExtras, kw_only=True, forbid_unknown_fields=True):
    size: SizeName | None = None
    response_format: ResponseFormat | None = None
    quality: Quality | None = None
    style: Style | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Background | None = None
    moderation: ShortText | None = None
    input_fidelity: ShortText | None = None
    user: ShortText | None = None
