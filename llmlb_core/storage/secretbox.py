"""Upstream endpoint keys encrypted at rest with a secret that only the operator holds.

The router must keep the upstream API keys of ``/v0/endpoints`` (it needs them after a restart),
so they sit in its database (SQLite or PostgreSQL). With ``secret_key`` (env
``LLMLB_SECRET_KEY``) set, each key is stored as a Fernet token (AES-128-CBC + HMAC-SHA256:
confidential and tamper-evident), and a copy of the database alone does not reveal it.

Key derivation (our choice: a passphrase, not a raw Fernet key). ``secret_key`` is any string of
at least 16 characters; a generated one is best::

    LLMLB_SECRET_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")

The Fernet key is derived from it with scrypt (n=2**14, r=8, p=1; about 50 ms, once at start)
over a random 16-byte salt kept in the database. So operators paste any secret (no base64 key
format to get right), a weak one is costly to guess offline, and the same secret gives a
different key on every install. Next to the salt the database keeps a *verifier*, a known text
sealed with the derived key: a wrong secret is caught at start, before any endpoint is loaded,
and the router refuses to start with one line (exit 2).

Policy at start (:func:`protect_endpoint_keys`):

- secret set: plain-text keys from before are encrypted at once (one log line), and every key
  written later is encrypted;
- secret set, but not the one the database was sealed with: refusal to start;
- no secret, but keys in the database are encrypted: refusal to start (they cannot be used);
- no secret and keys in plain text: one warning saying how to set it.

Changing the secret: delete the endpoints that have keys (under the old secret), restart with
the new one, and add them again. A new secret is adopted (new salt and verifier) whenever no
encrypted key is stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken

from llmlb_core.config.settings import SettingsError

log = logging.getLogger("llmlb.secrets")

MIN_SECRET_CHARS = 16
SALT_KEY = "secret_salt"
CHECK_KEY = "secret_check"
_CHECK_TEXT = "llmlb secret check v1"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
HOW_TO_SET = (
    'set secret_key or LLMLB_SECRET_KEY, e.g. LLMLB_SECRET_KEY=$(python -c "import secrets; '
    'print(secrets.token_urlsafe(32))")'
)


class Store(Protocol):
    """What the sealing policy needs of a store (:class:`llmlb_core.storage.sql.SqlStore`)."""

    location: str  # the database, in messages (a file path, or a URL without its password)
    endpoint_box: SecretBox | None

    def count_endpoint_keys(self, *, sealed: bool) -> int: ...

    def seal_plaintext_endpoint_keys(self) -> int: ...

    def warn_plaintext_endpoint_keys(self) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def add_meta(self, key: str, value: str) -> str: ...


class SecretKeyError(SettingsError):
    """The secret key is missing, too short or not the one the database was sealed with."""


class SecretBox:
    """Seals and opens short strings with a key derived from the operator's secret."""

    def __init__(self, secret: str, salt: bytes) -> None:
        derived = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)  # type: ignore[arg-type]
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, token: str, *, what: str = "a stored secret") -> str:
        """The plain text; :class:`SecretKeyError` when sealed under another key (or altered)."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                f"secret_key cannot decrypt {what} (encrypted with another secret, or altered)"
            ) from None


def protect_endpoint_keys(store: Store, secret_key: str | None) -> None:
    """Apply the policy of the module docstring to ``store`` (raises :class:`SecretKeyError`)."""
    if not secret_key:
        sealed = store.count_endpoint_keys(sealed=True)
        if sealed:
            raise SecretKeyError(
                f"{sealed} endpoint key(s) in {store.location} are encrypted; set secret_key or "
                "LLMLB_SECRET_KEY to the secret they were encrypted with"
            )
        if store.count_endpoint_keys(sealed=False):
            store.warn_plaintext_endpoint_keys()
        return
    if len(secret_key) < MIN_SECRET_CHARS:
        raise SecretKeyError(f"secret_key must be at least {MIN_SECRET_CHARS} characters; {HOW_TO_SET}")
    store.endpoint_box = open_box(store, secret_key)
    sealed_now = store.seal_plaintext_endpoint_keys()
    if sealed_now:
        log.info("encrypted %d endpoint key(s) at rest with secret_key", sealed_now)


def open_box(store: Store, secret_key: str) -> SecretBox:
    """The install's box: its salt and verifier are made on first use, checked afterwards."""
    salt, check = store.get_meta(SALT_KEY), store.get_meta(CHECK_KEY)
    if salt is not None and check is not None:
        box = SecretBox(secret_key, base64.b64decode(salt))
        if _opens(box, check):
            return box
        if store.count_endpoint_keys(sealed=True):
            raise SecretKeyError(
                f"secret_key is not the one the endpoint keys in {store.location} were encrypted with; "
                "start with that secret (if it is lost, see 'secrets' in docs/security.md)"
            )
        log.info("secret_key changed while no encrypted endpoint key is stored; the new one is adopted")
    if check is None:  # first use (perhaps by several routers at once): all agree on one salt
        salt = salt or store.add_meta(SALT_KEY, base64.b64encode(secrets.token_bytes(16)).decode("ascii"))
        box = SecretBox(secret_key, base64.b64decode(salt))
        if _opens(box, store.add_meta(CHECK_KEY, box.seal(_CHECK_TEXT))):
            return box
    new_salt = secrets.token_bytes(16)
    box = SecretBox(secret_key, new_salt)
    store.set_meta(SALT_KEY, base64.b64encode(new_salt).decode("ascii"))
    store.set_meta(CHECK_KEY, box.seal(_CHECK_TEXT))
    return box


def _opens(box: SecretBox, check: str) -> bool:
    try:
        return box.open(check) == _CHECK_TEXT
    except SecretKeyError:
        return False
