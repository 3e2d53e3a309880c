"""One helper for the common route: a JSON request body, decoded strictly, in the API docs.

``json_route(path, RequestType, AnswerType)`` makes a ``POST`` handler that reads the body,
decodes it with :func:`~llmlb_core.server.bodies.decode_json_bytes` (a bad body is an
OpenAI-shaped 400 naming the field, before the function runs) and publishes both types in
``/docs`` (:func:`~llmlb_core.server.openapi_docs.openapi_json_body`). The function gets the
decoded request, and the raw body too when it takes a second argument (to forward the client's
bytes as they are)::

    @json_route("/v1/reverse", ReverseRequest, ReverseResponse)
    async def reverse(req: ReverseRequest, body: bytes) -> Response[bytes]:
        result = await context.forward.call(req.model, FLAGS, "/v1/reverse", content=body,
                                            content_type="application/json",
                                            check=answer_type(ReverseResponse))
        return result.to_response()

It returns what a Litestar handler may: a ``Response``, or a value (a struct) Litestar encodes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request, post
from litestar.handlers import HTTPRouteHandler

from llmlb_core.server.bodies import decode_json_bytes
from llmlb_core.server.openapi_docs import openapi_json_body

R = TypeVar("R")


def json_route(
    path: str,
    request_type: type[R],
    answer_type: type[Any] | None = None,
    *,
    status_code: int = 200,
    **options: Any,
) -> Callable[[Callable[..., Awaitable[Any]]], HTTPRouteHandler]:
    """A decorator: ``POST path`` that decodes its JSON body strictly as ``request_type`` and
    calls the decorated ``async def f(req)`` (or ``f(req, body)``: the raw bytes too).
    ``answer_type``: the JSON it answers, shown in ``/docs``. ``options`` go to Litestar's
    ``post`` (``opt=``, ``request_max_body_size=``, ``name=``, ...)."""

    def decorate(function: Callable[..., Awaitable[Any]]) -> HTTPRouteHandler:
        with_body = len(inspect.signature(function).parameters) >= 2

        async def handler(request: Request[Any, Any, Any]) -> Any:
            body = await request.body()
            decoded = decode_json_bytes(body, request_type)
            return await (function(decoded, body) if with_body else function(decoded))

        # Litestar reads the signature: the handler's own (not the function's), with its name
        # and docstring (the docs' summary and description).
        handler.__annotations__ = {"request": Request[Any, Any, Any], "return": Any}
        handler.__name__, handler.__qualname__ = function.__name__, function.__qualname__
        handler.__doc__ = function.__doc__
        operation = openapi_json_body(request_type, answer=answer_type)
        return post(path, status_code=status_code, operation_class=operation, **options)(handler)

    return decorate
