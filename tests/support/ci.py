"""Whether the tests run under CI, where a missing test dependency is a failure, not a skip."""

from __future__ import annotations

import os


def in_ci() -> bool:
    """``CI`` is set to anything but empty, ``0`` or ``false`` (``.ci/run`` runs with CI=true)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")
