"""Whether the tests run under CI, where a missing test dependency is a failure, not a skip."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CI`` is set to anything but empty, ``0`` or ``false`` (``.ci/run`` runs with CI=true)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(reason: str, tests: str) -> NoReturn:
    """A test dependency is missing: skip saying ``reason``, or fail under CI, where ``tests``
    (e.g. "the Redis tests") must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI must run {tests})")
    pytest.skip(reason)
