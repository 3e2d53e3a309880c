"""Server-side dashboard sessions: an unguessable id in an HttpOnly cookie maps to the admin key
that signed in and a CSRF token. The key never leaves the router: the browser holds only the id.

A session ends when unused for ``idle_s``, ``max_age_s`` after sign-in, at sign-out, when the
API refuses its key (revoked or expired), or when ``max_sessions`` newer ones push it out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "llmlb_dashboard"
# The sign-in form's double-submit token: the same value in a cookie and in a hidden field.
LOGIN_COOKIE = "llmlb_dashboard_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a missing or empty value never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Session:
    id: str
    admin_key: str
    csrf: str
    created: float
    last_used: float


class SessionStore:
    def __init__(
        self,
        *,
        idle_s: float,
        max_age_s: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle_s = idle_s
        self._max_age_s = max_age_s
        self._max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def create(self, admin_key: str) -> Session:
        now = self._clock()
        session = Session(id=new_token(), admin_key=admin_key, csrf=new_token(), created=now, last_used=now)
        self._sessions[session.id] = session
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (marked used now), else None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self._idle_s or now - session.created > self._max_age_s:
            del self._sessions[session_id]
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)
