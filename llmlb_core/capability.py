"""What a capability plugin declares about itself."""

from __future__ import annotations

import msgspec


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    # Name admins use in `capabilities = [...]`, e.g. "images".
    name: str
    # Model capability flags this capability serves, e.g. {"image_generation"}.
    model_flags: frozenset[str]
    # Node runtime types that can serve it, e.g. {"stable_diffusion"}.
    runtime_types: frozenset[str] = frozenset()
    description: str = ""
    # Name of a schema this capability registers (``llmlb_register_schemas``) that an admin's
    # per-model defaults must convert to (``POST /v0/models`` answers a 400 naming the key that
    # does not). None: the defaults are not checked.
    defaults_schema: str | None = None
