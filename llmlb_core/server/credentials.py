"""How a request carries its API key, and the rules for keys an operator gives.

Shared by the router (whose :mod:`llmlb_core.router.auth` checks keys against its store) and
the node (which checks its own router's key on every call).
"""

from __future__ import annotations

import re
from typing import Any

from llmlb_core.config.settings import SettingsError

# A route handler with ``opt={PUBLIC_OPT: True}`` needs no key (plugins mark such routes).
PUBLIC_OPT = "llmlb_public"
# What a key sent in a header can hold: printable ASCII without spaces.
_KEY_RE = re.compile(r"[!-~]{1,512}")
# The shortest admin key an operator may give (LLMLB_ADMIN_KEY / admin_key); generated keys are
# 52 characters (256 random bits).
MIN_ADMIN_KEY_CHARS = 32
MAKE_A_KEY = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def key_from_headers(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key else None


def admin_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be the admin key an operator gives (one line that never shows the key),
    or None. A key with spaces or control characters could never be sent in a header; a short
    one could be guessed."""
    if not _KEY_RE.fullmatch(key):
        return "admin_key (LLMLB_ADMIN_KEY) must be printable ASCII without spaces (at most 512)"
    if len(key) < MIN_ADMIN_KEY_CHARS:
        return (
            f"admin_key (LLMLB_ADMIN_KEY) has {len(key)} characters; it needs at least "
            f"{MIN_ADMIN_KEY_CHARS}: {MAKE_A_KEY}"
        )
    return None


def check_admin_key(key: str | None) -> None:
    """A :class:`SettingsError` when the admin key an operator gave has a problem (unset: none)."""
    problem = admin_key_problem(key) if key else None
    if problem is not None:
        raise SettingsError(problem)
