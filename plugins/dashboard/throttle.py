"""Failed dashboard sign-ins, counted per client address: an address whose sign-ins failed
``max_failures`` times within ``window_s`` of its first failure is refused (429 with
``Retry-After``) until that window ends, with its right key too (else the refusal would tell a
guesser nothing). Then it starts afresh.

- Per address only: a sign-in from one address neither counts against nor clears another's
  (an attacker's lock does not end when the admin signs in from elsewhere). A success clears
  nothing either: addresses are shared (NAT, a proxy), and a success must not buy the others
  behind it more guesses.
- Bounded memory: at most ``max_addresses`` addresses (a few hundred bytes each) are counted. A
  new address beyond that first drops the windows that ended, then the oldest one: an attacker
  with more addresses than that loses its own oldest counts first.
- The address is the connection's peer, or the client a trusted reverse proxy names
  (uvicorn's ``X-Forwarded-For`` handling: docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Addresses whose failures are counted at once (about 2 MB at most: ~200 bytes each).
MAX_ADDRESSES = 10_000
# Longer addresses (only a trusted proxy's X-Forwarded-For can make them) are cut to this.
MAX_ADDRESS_CHARS = 64


@dataclass(slots=True)
class _Window:
    started: float  # the first failure's time
    failures: int = 0


class SignInThrottle:
    """Counts failed sign-ins per client address (see the module docstring)."""

    def __init__(
        self,
        *,
        max_failures: int,
        window_s: float,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first

    def _live(self, address: str, now: float) -> _Window | None:
        window = self._windows.get(address[:MAX_ADDRESS_CHARS])
        if window is not None and now - window.started >= self.window_s:
            del self._windows[address[:MAX_ADDRESS_CHARS]]
            return None
        return window

    def retry_after_s(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it may now."""
        now = self._clock()
        window = self._live(address, now)
        if window is None or window.failures < self.max_failures:
            return None
        return max(1, math.ceil(window.started + self.window_s - now))

    def failed(self, address: str) -> bool:
        """Count a failed sign-in from ``address``; whether that locked it (its last allowed)."""
        now = self._clock()
        window = self._live(address, now)
        if window is None:
            self._make_room(now)
            window = self._windows[address[:MAX_ADDRESS_CHARS]] = _Window(started=now)
        window.failures += 1
        return window.failures == self.max_failures

    def _make_room(self, now: float) -> None:
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if now - oldest.started < self.window_s and len(self._windows) < self._max_addresses:
                return
            self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)
