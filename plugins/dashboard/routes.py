"""The dashboard's routes, all under ``/dashboard`` and outside the API key guard (a browser
sends no key): the pages, the sign-in and sign-out forms, the static files, and the relay
``/dashboard/api/<public API path>`` through which the scripts act for the signed-in admin.

Sign-in checks the admin key against the API itself and starts a server-side session (the
cookie holds only its id: HttpOnly, SameSite=Strict, Secure over https, path /dashboard). The
sign-in form carries a double-submit token; every relayed POST and DELETE must carry the
session's CSRF token in ``x-csrf-token``. No key ever appears in a URL. Failed sign-ins are
counted per client address (``throttle``): past the limit, the sign-in page answers 429 with
``Retry-After`` and says when to come back."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import HttpMethod, Request, Response, get, post, route
from litestar.datastructures import Cookie
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect

from llmlb_core.api import PUBLIC_OPT, QUIET_LOG_OPT, CapabilityContext, OpenAIError
from llmlb_plugins.dashboard.assets import load_assets
from llmlb_plugins.dashboard.pages import PAGE_HEADERS, dashboard_page, login_page
from llmlb_plugins.dashboard.public_api import PublicApi, allowed_path, passed_headers
from llmlb_plugins.dashboard.sessions import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    Session,
    SessionStore,
    new_token,
    same_token,
)
from llmlb_plugins.dashboard.settings import DashboardSettings
from llmlb_plugins.dashboard.throttle import SignInThrottle

log = logging.getLogger("llmlb.dashboard")

PATH = "/dashboard"
# What the dashboard's handlers share: no API key (the session is checked instead), not in the
# OpenAPI document (they are no API).
OPTIONS: dict[str, Any] = {"opt": {PUBLIC_OPT: True}, "include_in_schema": False}
# The scripts and the relay, which pages use all the time: logged at DEBUG when they succeed (a
# relayed call is logged by the route it reaches).
QUIET: dict[str, Any] = {**OPTIONS, "opt": {PUBLIC_OPT: True, QUIET_LOG_OPT: True}}
LOGIN_FORM_LIMIT = 16 * 1024
CSRF_MESSAGE = "Missing or wrong CSRF token: reload the dashboard."
# An API key as it can travel in a header: printable ASCII without spaces.
_KEY_RE = re.compile(r"[!-~]{1,512}")


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _error_message(answer: Any) -> str:
    try:
        return str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {answer.status_code}"


def build_routes(context: CapabilityContext[DashboardSettings]) -> list[BaseRouteHandler]:
    cfg = context.settings
    sessions = SessionStore(
        idle_s=cfg.session_idle_minutes * 60,
        max_age_s=cfg.session_max_hours * 3600,
        max_sessions=cfg.max_sessions,
        shared=context.shared,
    )
    throttle = SignInThrottle(max_failures=cfg.max_failed_sign_ins, window_s=cfg.sign_in_window_s)
    api = PublicApi()
    context.on_shutdown(api.close)
    assets = load_assets()
    https_public = context.public_url.startswith("https://")

    def cookie(request: Request[Any, Any, Any], name: str, value: str, *, expire: bool = False) -> Cookie:
        return Cookie(
            key=name,
            value=value,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=https_public or request.url.scheme == "https",
            max_age=0 if expire else None,
        )

    async def session_of(request: Request[Any, Any, Any]) -> Session | None:
        return await sessions.get(request.cookies.get(COOKIE))

    def page(
        body: str,
        status: int = 200,
        cookies: list[Cookie] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response[str]:
        return Response(
            body,
            status_code=status,
            media_type="text/html",
            headers={**PAGE_HEADERS, **(headers or {})},
            cookies=cookies,
        )

    def login_again(
        request: Request[Any, Any, Any],
        message: str | None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response[str]:
        token = new_token()
        body = login_page(assets, token, message)
        return page(body, status, [cookie(request, LOGIN_COOKIE, token)], headers)

    def refused(request: Request[Any, Any, Any], address: str, message: str, status: int) -> Response[str]:
        """A failed sign-in: counted against ``address``, and the form again."""
        if throttle.failed(address):
            log.warning(
                "dashboard: %d failed sign-ins from %r within %gs; refusing its sign-ins until then",
                throttle.max_failures,
                address,
                throttle.window_s,
            )
        return login_again(request, message, status)

    @get(PATH, **OPTIONS)
    async def dashboard(request: Request[Any, Any, Any]) -> Response[Any]:
        session = await session_of(request)
        if session is None:
            return Redirect(f"{PATH}/login", status_code=303)
        return page(dashboard_page(assets, session.csrf))

    @get(f"{PATH}/login", **OPTIONS)
    async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
        if await session_of(request) is not None:
            return Redirect(PATH, status_code=303)
        ended = "Your session ended: sign in again." if request.query_params.get("ended") else None
        return login_again(request, ended)

    @post(f"{PATH}/login", status_code=200, request_max_body_size=LOGIN_FORM_LIMIT, **OPTIONS)
    async def login(request: Request[Any, Any, Any]) -> Response[Any]:
        address = request.client.host if request.client is not None else "unknown"
        wait_s = throttle.retry_after_s(address)
        if wait_s is not None:  # checked first: no key is looked at while the address waits
            message = f"Too many failed sign-ins from your address: try again in {wait_s} s."
            return login_again(request, message, 429, {"retry-after": str(wait_s)})
        form = await request.form()
        if not same_token(_form_text(form, CSRF_FIELD), request.cookies.get(LOGIN_COOKIE)):
            return login_again(
                request, "The sign-in form expired or came from another site: sign in again.", 403
            )
        key = _form_text(form, "key")
        if not _KEY_RE.fullmatch(key):
            return refused(request, address, "Enter an admin API key (printable characters, no spaces).", 400)
        answer = await api.call(request.app, "GET", "/v0/capabilities", key=key)
        if answer.status_code in (401, 403):
            return refused(
                request, address, f"That key was refused: {_error_message(answer)}", answer.status_code
            )
        if answer.status_code != 200:
            return login_again(request, f"That key was refused: {_error_message(answer)}", 502)
        session = await sessions.create(key)
        return Redirect(
            PATH,
            status_code=303,
            cookies=[cookie(request, COOKIE, session.id), cookie(request, LOGIN_COOKIE, "", expire=True)],
        )

    @post(f"{PATH}/logout", status_code=303, request_max_body_size=LOGIN_FORM_LIMIT, **OPTIONS)
    async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
        session = await session_of(request)
        if session is not None:
            if not same_token(_form_text(await request.form(), CSRF_FIELD), session.csrf):
                raise OpenAIError(403, CSRF_MESSAGE, code="csrf_failed")
            await sessions.end(session.id)
        return Redirect(f"{PATH}/login", status_code=303, cookies=[cookie(request, COOKIE, "", expire=True)])

    @get(f"{PATH}/static/{{name:str}}", **QUIET)
    async def static(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        asset = assets.get(name)
        if asset is None:
            raise OpenAIError(404, f"The dashboard has no file '{name}'", param="name", code="not_found")
        etag = f'"{asset.version}"'
        headers = {"etag": etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(b"", status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @route(
        f"{PATH}/api/{{path:path}}",
        http_method=[HttpMethod.GET, HttpMethod.POST, HttpMethod.DELETE],
        status_code=200,
        request_max_body_size=cfg.max_body_bytes,
        **QUIET,
    )
    async def relay(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
        """The public API, called for the signed-in admin."""
        session = await session_of(request)
        if session is None:
            raise OpenAIError(
                401, "Sign in to the dashboard first (/dashboard/login).", code="dashboard_session_required"
            )
        changes = request.method != HttpMethod.GET
        if changes and not same_token(request.headers.get(CSRF_HEADER), session.csrf):
            raise OpenAIError(403, CSRF_MESSAGE, code="csrf_failed")
        if not allowed_path(path):
            raise OpenAIError(
                404, f"The dashboard relays /v0/, /v1/ and /metrics only, not '{path}'", param="path"
            )
        answer = await api.call(
            request.app,
            request.method,
            path,
            key=session.admin_key,
            query=request.scope["query_string"].decode("latin-1"),
            body=await request.body() if request.method == HttpMethod.POST else b"",
            content_type=request.headers.get("content-type"),
            request_id=request.headers.get("x-request-id"),
        )
        if answer.status_code == 401:
            await sessions.end(session.id)  # the key was revoked or expired: sign in again
        headers = passed_headers(answer)
        media_type = headers.get("content-type", "application/octet-stream")  # stays a header, as sent
        headers["cache-control"] = "no-store"
        return Response(
            answer.content, status_code=answer.status_code, media_type=media_type, headers=headers
        )

    return [dashboard, login_form, login, logout, static, relay]
