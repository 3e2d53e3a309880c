"""The dashboard's settings: the ``[plugin.dashboard]`` table of the router config.

Environment: ``LLMLB_PLUGIN__DASHBOARD__<KEY>`` (e.g. ``LLMLB_PLUGIN__DASHBOARD__SESSION_IDLE_MINUTES=30``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MB = 1024 * 1024


class DashboardSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # A signed-in session unused this long ends (an open dashboard polls, so it stays in use).
    session_idle_minutes: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # A session ends this long after sign-in, used or not.
    session_max_hours: Annotated[float, msgspec.Meta(gt=0)] = 12.0
    # Signed-in sessions kept at once; the least recently used one ends past this.
    max_sessions: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Largest request the dashboard relays to the API (playground uploads: an image and a mask).
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 32 * MB
    # Failed sign-ins (a wrong or non-admin key) from one client address, within sign_in_window_s
    # of its first, after which that address's sign-ins are refused (429, Retry-After) until the
    # window ends.
    max_failed_sign_ins: Annotated[int, msgspec.Meta(ge=1)] = 10
    sign_in_window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
