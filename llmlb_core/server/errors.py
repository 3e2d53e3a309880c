"""OpenAI-shaped errors: one exception type and the Litestar handlers that render every error.

Every error leaving the router or a node has the body
``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``,
including Litestar's own 404/405/413 and validation errors and unexpected exceptions (500).
A server-side error (5xx) names no internal class and quotes the request id
(``llmlb_core.server.request_id``) that the router's log line about it carries.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from llmlb_core.server.disconnect import CLIENT_CLOSED_REQUEST, client_left
from llmlb_core.server.request_id import with_request_id

log = logging.getLogger("llmlb.errors")

# OpenAI's error "type" per status (what the official SDK and its users see).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# The error code of a node's 504 for a job that ran past its time limit (``JobTimedOut``).
JOB_TIMEOUT = "job_timeout"

_CODE_BY_STATUS = {
    401: "invalid_api_key",
    403: "insufficient_scope",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class OpenAIError(Exception):
    """An error that the client sees as an OpenAI error body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.code = code if code is not None else _CODE_BY_STATUS.get(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        message = with_request_id(self.message) if self.status >= 500 else self.message
        return error_body(message, type=self.type, param=self.param, code=self.code)

    def to_response(self) -> Response[Any]:
        return Response(content=self.body(), status_code=self.status, headers=self.headers)


class NodeFailure(OpenAIError):
    """A node or endpoint failed a request (unreachable, timed out, 5xx, a bad answer) before
    answering it: another node may succeed, so the router retries it elsewhere."""


class UpstreamTimeout(NodeFailure):
    """A node took longer than ``upstream_timeout_s``: 504 ``upstream_timeout``. The node may
    still be working on the job."""

    def __init__(self, node_name: str) -> None:
        super().__init__(504, f"Node '{node_name}' timed out", type="server_error", code="upstream_timeout")


class UpstreamUnreachable(NodeFailure):
    """A node refused or reset the connection, or broke off its answer: 502
    ``upstream_unreachable``."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message, type="server_error", code="upstream_unreachable")


class BadUpstreamAnswer(NodeFailure):
    """A node answered something the route cannot use: 502 ``bad_upstream_response``."""

    def __init__(self, node_name: str) -> None:
        super().__init__(
            502,
            f"Node '{node_name}' sent an answer the router cannot use",
            type="server_error",
            code="bad_upstream_response",
        )


class UpstreamStreamBroken(NodeFailure):
    """A node's event stream broke off, or the node reported a failure in it, after its first
    event: 502 ``upstream_stream_broken`` (``code`` may carry the node's own error code)."""

    def __init__(self, node_name: str, code: str = "upstream_stream_broken") -> None:
        super().__init__(502, f"Node '{node_name}' stopped streaming", type="server_error", code=code)


class JobTimedOut(OpenAIError):
    """A node stopped the job because it ran past the node's time limit (the node answered 504
    ``job_timeout``): 504 ``job_timeout``. The job, not the node, was the problem: it is not
    tried on another node (it would run as long there) and the node is not marked suspect."""

    def __init__(self, node_name: str) -> None:
        super().__init__(
            504,
            f"The job ran past the time limit of node '{node_name}' (its max_job_seconds) and was "
            "stopped: ask for fewer steps, a smaller size or fewer images, or ask the operator to "
            "raise the limit",
            type="server_error",
            code=JOB_TIMEOUT,
        )


class ModelNotFound(OpenAIError):
    """No node serves the model and no admin registered it: 404 ``model_not_found``."""

    def __init__(self, model: str) -> None:
        super().__init__(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


class NoCapableNodes(OpenAIError):
    """The model is known but no online node can take it now: 503 ``no_capable_nodes``;
    ``detail`` says why (e.g. where it was last seen)."""

    def __init__(self, model: str, detail: str = "") -> None:
        super().__init__(
            503,
            f"No online node can serve model '{model}' right now" + (f" ({detail})" if detail else ""),
            type="server_error",
            param="model",
            code="no_capable_nodes",
        )


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


_PATH_RE = re.compile(r"at `\$\.([A-Za-z0-9_\.\[\]]+)`")


def from_msgspec_error(exc: msgspec.DecodeError) -> OpenAIError:
    """Turn a msgspec validation/decode error into a 400 whose ``param`` names the field."""
    text = str(exc)
    match = _PATH_RE.search(text)
    param = match.group(1).split(".")[0].split("[")[0] if match else None
    if param is None and (missing := re.search(r"missing required field `(\w+)`", text)):
        param = missing.group(1)
    if param is None and (unknown := re.search(r"unknown field `(\w+)`", text)):
        param = unknown.group(1)
    if isinstance(exc, msgspec.ValidationError):
        return OpenAIError(400, f"Invalid request: {text}", param=param, code="invalid_value")
    return OpenAIError(400, f"Invalid JSON body: {text}", param=param, code="invalid_json")


def _openai_error_handler(_: Request[Any, Any, Any], exc: OpenAIError) -> Response[Any]:
    return exc.to_response()


def _http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    message = exc.detail or "error"
    if status == 404 and message == "Not Found":
        message = "Unknown endpoint"
    if status == 413:
        message = "Request body is too large"
    param = None
    if isinstance(exc, ValidationException):
        # Litestar's own body/parameter validation (routes that use typed `data`).
        extra = exc.extra if isinstance(exc.extra, list) else []
        if extra and isinstance(extra[0], dict):
            first = extra[0]
            param = first.get("key") if first.get("key") not in (None, "data") else None
            message = f"{message}: {first.get('message', '')}".rstrip(": ")
    headers = dict(exc.headers or {})
    if status >= 500 and client_left(request.scope):
        # Litestar reports a client that hung up mid-upload as a 500; nobody is listening.
        log.info("client left %s %s while sending its body", request.method, request.url.path)
        return Response(content=b"", status_code=CLIENT_CLOSED_REQUEST)
    if status >= 500:
        log.warning("HTTP %d on %s %s: %r", status, request.method, request.url.path, message)
        message = with_request_id("Internal server error")
    body = error_body(
        message,
        type=_TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        param=param,
        code=_CODE_BY_STATUS.get(status),
    )
    return Response(content=body, status_code=status, headers=headers)


def _unexpected_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    message = with_request_id("Internal server error")
    log.exception("%s on %s %s", message, request.method, request.url.path, exc_info=exc)
    body = error_body(message, type="server_error", code="internal_error")
    return Response(content=body, status_code=500)


def exception_handlers() -> ExceptionHandlersMap:
    """Handlers for a Litestar app so that every error is OpenAI-shaped."""
    return {
        OpenAIError: _openai_error_handler,
        HTTPException: _http_exception_handler,
        Exception: _unexpected_exception_handler,
    }
