"""TLS between the router and its nodes: the client trust store, server certificates, policy.

- The router verifies every HTTPS node (and HTTPS endpoint) against ``node_ca_bundle`` when it
  is set, or the system trust store when it is not. A bundle *replaces* the system store, as
  ``curl --cacert`` does: only certificates issued by its CAs are trusted. (Append the system
  bundle to the file when the router also talks to public HTTPS endpoints.)
- A node verifies an HTTPS router the same way with ``--router-ca-bundle``.
- ``require_node_tls`` makes the router refuse to register a node whose ``base_url`` is not
  ``https://``, so the router's per-node credential never crosses the network in clear.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from llmlb_core.config.settings import SettingsError
from llmlb_core.server.errors import OpenAIError


def client_ssl_context(ca_bundle: str | None, *, what: str = "node_ca_bundle") -> ssl.SSLContext:
    """A verifying client context: certificates and host names are checked (TLS 1.2+).

    ``ca_bundle``: a PEM file of CA certificates, the only ones trusted; None: the system's.
    A bundle that cannot be read is a :class:`SettingsError` naming ``what``.
    """
    if ca_bundle is None:
        return ssl.create_default_context()
    path = Path(ca_bundle).expanduser()
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"{what} {path}: cannot load a PEM CA bundle ({_reason(exc)})") from None


def check_server_cert(cert: str | None, key: str | None, *, flags: str = "--tls-cert/--tls-key") -> None:
    """Fail early and clearly (not in uvicorn's traceback) when the certificate pair is unusable."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise SettingsError(f"{flags}: give both the certificate and its private key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(Path(cert).expanduser()), str(Path(key).expanduser())
        )
    except ssl.SSLError:
        raise SettingsError(
            f"{flags}: {cert} and {key} are not a PEM certificate and its private key"
        ) from None
    except OSError as exc:
        raise SettingsError(f"{flags}: cannot read {cert} or {key} ({_reason(exc)})") from None


def require_https(base_url: str, required: bool) -> None:
    """A node registration under ``require_node_tls``: its URL must be ``https://`` (else a 400)."""
    if required and not base_url.lower().startswith("https://"):
        raise OpenAIError(
            400,
            "This router accepts only HTTPS nodes (require_node_tls): start the node with "
            "--tls-cert and --tls-key",
            param="base_url",
            code="node_tls_required",
        )


def tls_failure(exc: BaseException) -> str | None:
    """The TLS reason (e.g. ``certificate verify failed: ...``) behind a connection error, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return _reason(current)
        current = current.__cause__ or current.__context__
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
