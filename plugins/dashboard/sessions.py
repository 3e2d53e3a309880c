"""Server-side dashboard sessions: an unguessable id in an HttpOnly cookie maps to the admin key
that signed in and a CSRF token. The key never leaves the router: the browser holds only the id.

A session ends when unused for ``idle_s``, ``max_age_s`` after sign-in, at sign-out, when the
API refuses its key (revoked or expired), or (one router) when ``max_sessions`` newer ones push
it out.

Where sessions are kept (one :class:`SessionStore` over one of two backends):

- one router (SQLite, ``context.shared`` is None): in memory (:class:`MemorySessions`);
- several routers (PostgreSQL): the routers' shared table (:class:`SharedSessions`), so a
  sign-in through one router works through every other, and a sign-out through any ends it
  everywhere. The relay needs the admin key in clear, so the row holds it, but sealed with a
  key derived from the session id, which only the browser's cookie holds; the row is found by
  another hash of the id. A copy of the database therefore yields neither the admin key nor
  a usable session id (and needs no ``secret_key``). Lifetimes are the table's: idle time as
  a sliding expiry, renewed on each use, never past ``max_age_s`` after sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken

from llmlb_core.api import SharedBlobs

COOKIE = "llmlb_dashboard"
# The sign-in form's double-submit token: the same value in a cookie and in a hidden field.
LOGIN_COOKIE = "llmlb_dashboard_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# The namespace of the sessions in the routers' shared table.
NAMESPACE = "dashboard.sessions"


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


class SessionBackend(Protocol):
    """Where sessions live, each until its lifetime (renewed by :meth:`touch`) ends."""

    async def put(self, session: Session, ttl_s: float) -> None: ...

    async def get(self, session_id: str) -> Session | None:
        """The session, or None: absent or past its lifetime."""
        ...

    async def touch(self, session_id: str, ttl_s: float) -> None: ...

    async def delete(self, session_id: str) -> None: ...


class MemorySessions:
    """One router's sessions, in memory: at most ``max_sessions``, the least recently used
    pushed out past it."""

    def __init__(self, max_sessions: int, clock: Callable[[], float]) -> None:
        self._max_sessions = max_sessions
        self._clock = clock
        # Least recently used first: (session, end of its lifetime).
        self._sessions: OrderedDict[str, tuple[Session, float]] = OrderedDict()

    async def put(self, session: Session, ttl_s: float) -> None:
        self._sessions[session.id] = (session, self._clock() + ttl_s)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    async def get(self, session_id: str) -> Session | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if self._clock() > entry[1]:
            del self._sessions[session_id]
            return None
        return entry[0]

    async def touch(self, session_id: str, ttl_s: float) -> None:
        entry = self._sessions.get(session_id)
        if entry is not None:
            self._sessions[session_id] = (entry[0], self._clock() + ttl_s)
            self._sessions.move_to_end(session_id)

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)


def _derive(label: bytes, session_id: str) -> bytes:
    return hmac.new(label, session_id.encode(), hashlib.sha256).digest()


class SharedSessions:
    """Sessions in the routers' shared table: the row's key is a hash of the session id, its
    value the admin key, CSRF token and sign-in time sealed (Fernet) with a key derived from
    the id. Sessions are bounded by their lifetimes (the router purges expired rows), not by
    ``max_sessions``."""

    def __init__(self, shared: SharedBlobs) -> None:
        self._shared = shared

    @staticmethod
    def _row(session_id: str) -> str:
        return _derive(b"llmlb dashboard session row", session_id).hex()

    @staticmethod
    def _box(session_id: str) -> Fernet:
        return Fernet(base64.urlsafe_b64encode(_derive(b"llmlb dashboard session seal", session_id)))

    async def put(self, session: Session, ttl_s: float) -> None:
        plain = json.dumps({"admin_key": session.admin_key, "csrf": session.csrf, "created": session.created})
        sealed = self._box(session.id).encrypt(plain.encode())
        await self._shared.put(NAMESPACE, self._row(session.id), sealed, ttl_s)

    async def get(self, session_id: str) -> Session | None:
        sealed = await self._shared.get(NAMESPACE, self._row(session_id))
        if sealed is None:
            return None
        try:
            fields = json.loads(self._box(session_id).decrypt(sealed))
            return Session(
                id=session_id,
                admin_key=str(fields["admin_key"]),
                csrf=str(fields["csrf"]),
                created=float(fields["created"]),
                last_used=float(fields["created"]),
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None  # not sealed with this id's key (or altered): no session

    async def touch(self, session_id: str, ttl_s: float) -> None:
        await self._shared.touch(NAMESPACE, self._row(session_id), ttl_s)

    async def delete(self, session_id: str) -> None:
        await self._shared.delete(NAMESPACE, self._row(session_id))


class SessionStore:
    """The session rules (ids, CSRF tokens, idle time, maximum age) over a backend: in memory,
    or ``shared`` (the context's, several routers). ``clock``: seconds; by default monotonic in
    memory, the wall clock when shared (the routers compare sign-in times)."""

    def __init__(
        self,
        *,
        idle_s: float,
        max_age_s: float,
        max_sessions: int,
        clock: Callable[[], float] | None = None,
        shared: SharedBlobs | None = None,
    ) -> None:
        self._idle_s = idle_s
        self._max_age_s = max_age_s
        self._clock = clock or (time.monotonic if shared is None else time.time)
        self.backend: SessionBackend = (
            MemorySessions(max_sessions, self._clock) if shared is None else SharedSessions(shared)
        )

    async def create(self, admin_key: str) -> Session:
        now = self._clock()
        session = Session(id=new_token(), admin_key=admin_key, csrf=new_token(), created=now, last_used=now)
        await self.backend.put(session, min(self._idle_s, self._max_age_s))
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (marked used now), else None."""
        if not session_id:
            return None
        session = await self.backend.get(session_id)
        if session is None:
            return None
        now = self._clock()
        left_s = session.created + self._max_age_s - now
        if left_s < 0:
            await self.backend.delete(session_id)
            return None
        session.last_used = now
        await self.backend.touch(session_id, min(self._idle_s, left_s))
        return session

    async def end(self, session_id: str) -> None:
        await self.backend.delete(session_id)
