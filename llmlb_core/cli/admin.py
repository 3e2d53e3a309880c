"""The admin's commands: ``llmlb keys create|list|revoke``, ``llmlb models``, ``llmlb nodes``,
clients of the router's admin API (``/v0``).

``--router`` and ``--admin-key`` (or ``LLMLB_ROUTER`` / ``LLMLB_ADMIN_KEY``) work before and after
a ``keys`` command's name. Lists print as tables (``--json``: the answer as it came). A router
that cannot be reached, a refused key or an error answer is one line saying what to do next
(:class:`~llmlb_core.cli.support.OperatorError`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import httpx

from llmlb_core.cli import tables as cli_tables
from llmlb_core.cli.support import CONTEXT_SETTINGS, OperatorError, given

DEFAULT_ROUTER = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
GET_A_KEY = (
    "the router prints one at its first start, `llmlb demo` keeps its own in "
    "DATA_DIR/demo-admin-key, `llmlb keys create NAME --scope admin` makes more"
)


@dataclass(frozen=True)
class AdminTarget:
    router: str
    admin_key: str | None


def admin_options(command: Any) -> Any:
    """``--router`` and ``--admin-key``: on ``keys`` and on each command, so that they work
    before and after the command's name (``llmlb keys create x --router URL``)."""
    command = click.option(
        "--admin-key", envvar="LLMLB_ADMIN_KEY", show_envvar=True, help="an admin-scope API key"
    )(command)
    return click.option(
        "--router", envvar="LLMLB_ROUTER", show_envvar=True, default=DEFAULT_ROUTER, help="router URL"
    )(command)


def json_option(command: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print the router's JSON answer as is")(
        command
    )


def target_of(ctx: click.Context, router: str, admin_key: str | None) -> AdminTarget:
    """A command's own flags where given on its command line, else those of ``keys``."""
    group: AdminTarget = ctx.find_object(AdminTarget) or AdminTarget(router, admin_key)
    own = given(ctx, {"router": router, "admin_key": admin_key})
    return AdminTarget(own.get("router", group.router), own.get("admin_key", group.admin_key))


def _message(response: httpx.Response) -> str:
    """The error message of an answer (OpenAI's error shape), else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return json.dumps(body)[:200]


class AdminClient:
    """Calls to the admin API; every failure an :class:`OperatorError` in the operator's words."""

    def __init__(self, target: AdminTarget) -> None:
        if not target.admin_key:
            raise OperatorError(
                f"an admin key is required: pass --admin-key or set LLMLB_ADMIN_KEY ({GET_A_KEY})"
            )
        self.router = target.router.rstrip("/")
        self._headers = {"authorization": f"Bearer {target.admin_key}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        where = f"the router at {self.router}"
        try:
            response = httpx.request(
                method, f"{self.router}{path}", headers=self._headers, timeout=TIMEOUT_S, **kwargs
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise OperatorError(
                f"bad router URL {self.router!r} ({exc}): give it as http://HOST:PORT "
                "(--router or LLMLB_ROUTER)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise OperatorError(f"{where} did not answer within {TIMEOUT_S:.0f} s", exit_code=1) from exc
        except httpx.HTTPError as exc:
            reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)) or type(exc).__name__
            raise OperatorError(
                f"cannot reach {where} ({reason}): is it running? (llmlb serve; --router / LLMLB_ROUTER)",
                exit_code=1,
            ) from exc
        if response.status_code == 401:
            raise OperatorError(
                f"{where} refused the admin key ({_message(response)}): pass a valid admin-scope key "
                f"with --admin-key or LLMLB_ADMIN_KEY ({GET_A_KEY})"
            )
        if response.status_code == 403:
            raise OperatorError(
                f"{where} refused the key ({_message(response)}): it is not an admin-scope key; "
                f"pass one with --admin-key or LLMLB_ADMIN_KEY ({GET_A_KEY})"
            )
        if not response.is_success:
            raise OperatorError(f"{where} answered {response.status_code}: {_message(response)}", exit_code=1)
        try:
            return response.json()
        except ValueError as exc:
            raise OperatorError(
                f"{where} answered {response.status_code} with something that is not JSON: "
                "is --router an llmlb router?",
                exit_code=1,
            ) from exc


def show(answer: Any, as_json: bool, render: Callable[[Any], str]) -> int:
    print(json.dumps(answer, indent=2) if as_json else render(answer))
    return 0


def _rows(answer: Any) -> list[dict[str, Any]]:
    data = answer.get("data", []) if isinstance(answer, dict) else []
    return [row for row in data if isinstance(row, dict)]


# --- keys ----------------------------------------------------------------------------------
@click.group(context_settings=CONTEXT_SETTINGS, short_help="Create, list and revoke API keys (admin).")
@admin_options
@click.pass_context
def keys(ctx: click.Context, router: str, admin_key: str | None) -> None:
    """Create, list and revoke API keys (admin)."""
    ctx.obj = AdminTarget(router, admin_key)


@keys.command(context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option(
    "--scope",
    multiple=True,
    type=click.Choice(["api", "node", "admin"]),
    default=["api"],
    help="what the key may do (repeatable): api (the /v1 API), node (register a node), admin",
)
@click.option("--expires-in", type=float, help="lifetime in seconds  [default: never expires]")
@click.option("--node", metavar="NODE_ID", help="bind a node-scope key to this node id  [default: any node]")
@click.option("--models", metavar="A,B", help="the models the key may use  [default: every model]")
@admin_options
@json_option
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    scope: tuple[str, ...],
    expires_in: float | None,
    node: str | None,
    models: str | None,
    router: str,
    admin_key: str | None,
    as_json: bool,
) -> int:
    """Create a key. Its secret is printed once, alone on stdout (KEY=$(llmlb keys create x))."""
    body: dict[str, Any] = {"name": name, "scopes": list(scope)}
    if expires_in is not None:
        body["expires_in_s"] = expires_in
    if node:
        body["node_id"] = node
    if models is not None:
        body["models"] = _model_list(models)
    created = AdminClient(target_of(ctx, router, admin_key)).call("POST", "/v0/keys", json=body)
    if as_json:
        return show(created, True, str)
    info = created.get("info", {})
    print(
        f"created key {info.get('name')!r} (id {info.get('id')}, scopes "
        f"{cli_tables.listed(info.get('scopes', ()))}, expires "
        f"{cli_tables.relative(info.get('expires_at'), never='never')}); store it now, it is not "
        "shown again:",
        file=sys.stderr,
    )
    print(created.get("key"))
    return 0


@keys.command(name="list", context_settings=CONTEXT_SETTINGS)
@admin_options
@json_option
@click.pass_context
def list_keys(ctx: click.Context, router: str, admin_key: str | None, as_json: bool) -> int:
    """List keys (never their secrets), revoked and expired ones included."""
    answer = AdminClient(target_of(ctx, router, admin_key)).call("GET", "/v0/keys")
    return show(answer, as_json, lambda a: cli_tables.table(_rows(a), cli_tables.KEY_COLUMNS))


@keys.command(context_settings=CONTEXT_SETTINGS)
@click.argument("key_id", metavar="ID")
@admin_options
@json_option
@click.pass_context
def revoke(ctx: click.Context, key_id: str, router: str, admin_key: str | None, as_json: bool) -> int:
    """Revoke a key by its id (see `llmlb keys list`)."""
    answer = AdminClient(target_of(ctx, router, admin_key)).call("DELETE", f"/v0/keys/{key_id}")
    return show(answer, as_json, lambda _: f"revoked key {key_id}")


def _model_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


@keys.command(context_settings=CONTEXT_SETTINGS)
@click.argument("key_id", metavar="ID")
@click.option("--models", metavar="A,B", help="the models the key may use from now on")
@click.option("--all-models", is_flag=True, help="the key may use every model")
@admin_options
@json_option
@click.pass_context
def update(
    ctx: click.Context,
    key_id: str,
    models: str | None,
    all_models: bool,
    router: str,
    admin_key: str | None,
    as_json: bool,
) -> int:
    """Change a key's limits (see `llmlb keys list` for its id)."""
    if (models is None) == (not all_models):
        raise click.UsageError("give --models A,B or --all-models")
    body = {"models": None if all_models else _model_list(models or "")}
    answer = AdminClient(target_of(ctx, router, admin_key)).call("PATCH", f"/v0/keys/{key_id}", json=body)
    allowed = answer.get("models") if isinstance(answer, dict) else None
    return show(
        answer,
        as_json,
        lambda _: (
            f"key {key_id} may use {cli_tables.listed(allowed) if allowed is not None else 'every model'}"
        ),
    )


# --- models and nodes ----------------------------------------------------------------------
def _nodes_text(answer: Any) -> str:
    rows = _rows(answer)
    lines = [cli_tables.table(rows, cli_tables.NODE_COLUMNS)]
    jobs = [line for row in rows for line in cli_tables.job_lines(row)]
    if jobs:
        lines += ["", "running jobs:", *jobs]
    if isinstance(answer, dict) and "queue_depth" in answer:
        lines += ["", f"requests waiting in the router's queue: {answer['queue_depth']}"]
    return "\n".join(lines)


@click.command(context_settings=CONTEXT_SETTINGS, short_help="List nodes and their jobs (admin).")
@admin_options
@json_option
@click.pass_context
def nodes(ctx: click.Context, router: str, admin_key: str | None, as_json: bool) -> int:
    """List nodes and endpoints (admin).

    Each node's status, busy and total slots, queued jobs, models and loaded models, and the
    progress of its running jobs."""
    answer = AdminClient(target_of(ctx, router, admin_key)).call("GET", "/v0/nodes")
    return show(answer, as_json, _nodes_text)


@click.command(context_settings=CONTEXT_SETTINGS, short_help="List models and where they run (admin).")
@admin_options
@json_option
@click.pass_context
def models(ctx: click.Context, router: str, admin_key: str | None, as_json: bool) -> int:
    """List models and where they run (admin).

    Every model the router knows, served now or not: its status, capabilities, nodes and
    description."""
    answer = AdminClient(target_of(ctx, router, admin_key)).call("GET", "/v0/models")
    return show(answer, as_json, lambda a: cli_tables.table(_rows(a), cli_tables.MODEL_COLUMNS))


ADMIN_COMMANDS: tuple[click.Command, ...] = (keys, models, nodes)
