"""The request log (``llmlb_core.server.access_log``) and the log formats (``llmlb_core.server.log_format``).

A small Litestar app with a route mounted under ``/v0`` is called in memory (no server), wrapped
the way the router and the node wrap theirs (``access_log.install``); the lines are read from
the logger ``llmlb.access`` (caplog) and formatted with the formatters the servers install.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar, Request, Router, get, post
from litestar.params import FromPath
from litestar.testing import TestClient

from llmlb_core.protocol import GENERATION_SECONDS_HEADER, STEPS_HEADER, note_node_report
from llmlb_core.server import log_format, request_id
from llmlb_core.server.access_log import (
    QUIET_LOG_OPT,
    RequestRecord,
    _record,
    current_request,
    install,
    note_request,
)
from llmlb_core.server.errors import OpenAIError, exception_handlers

ACCESS = "llmlb.access"


@get("/things/{thing_id:str}")
async def get_thing(thing_id: FromPath[str]) -> dict[str, Any]:
    return {"id": thing_id}


@post("/things", status_code=200)
async def make_thing(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    record = current_request()
    assert record is not None and record.request_id == request_id.current()
    record.model = "m-1"
    record.add_node("gpu-0", failed=True)  # tried first, failed
    record.add_node("gpu-1")
    record.waited(0.25)
    note_request(images=2, generation_s=1.5, steps=40, seed=7)
    note_request(images=1)  # parts of one job add up
    return {"size": len(body)}


@get("/boom")
async def boom() -> None:
    raise OpenAIError(502, "Node 'a' failed", code="upstream_error")


@get("/poll", opt={QUIET_LOG_OPT: True})
async def poll() -> str:
    return "ok"


@get("/health")
async def health() -> str:
    return "ok"


@pytest.fixture
def observed() -> list[RequestRecord]:
    return []


@pytest.fixture
def client(observed: list[RequestRecord]) -> Iterator[TestClient[Litestar]]:
    app = Litestar(
        route_handlers=[Router("/v0", route_handlers=[get_thing, make_thing, boom, poll]), health],
        exception_handlers=exception_handlers(),
        logging_config=None,
        openapi_config=None,
    )
    install(app, observe=observed.append)
    with TestClient(app) as test_client:
        yield test_client


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


def test_a_request_is_one_line_with_its_full_route_template_and_what_the_handler_noted(
    client: TestClient[Litestar], observed: list[RequestRecord], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = client.post("/v0/things", content=b"x" * 300, headers={"x-request-id": "trace-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-1"
    [line] = access_records(caplog)
    assert line.levelno == logging.INFO
    fields = line.access.fields()  # type: ignore[attr-defined]
    assert fields["route"] == "/v0/things" and fields["method"] == "POST" and fields["status"] == 200
    assert fields["request_id"] == "trace-1"
    assert fields["bytes_in"] == 300 and fields["bytes_out"] == len(response.content)
    assert (fields["model"], fields["node"], fields["queue_wait_s"]) == ("m-1", "gpu-1", 0.25)
    assert fields["failed_nodes"] == "gpu-0"
    assert (fields["images"], fields["generation_s"], fields["steps"], fields["seed"]) == (3, 1.5, 40, 7)
    message = line.getMessage()
    assert message.startswith("POST /v0/things 200 ")
    for part in (
        "model=m-1",
        "node=gpu-1",
        "failed=gpu-0",
        "queue=0.250s",
        "in=300",
        "images=3",
        "gen=1.500s",
        "steps=40",
    ):
        assert part in message.split(), (part, message)
    assert message.endswith(" id=trace-1")
    [record] = observed
    assert record.route == "/v0/things" and record.matched and record.status == 200

    client.get("/v0/things/abc")
    assert access_records(caplog)[-1].access.route == "/v0/things/{thing_id}"  # type: ignore[attr-defined]


def test_unknown_paths_and_wrong_methods_are_logged_with_the_path_but_not_as_a_route(
    client: TestClient[Litestar], observed: list[RequestRecord], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = client.get("/v0/nope/123?key=secret")
    wrong = client.delete("/v0/things")
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert missing.headers["x-request-id"].startswith("req_")  # routing did not skip the id
    lines = [r.getMessage() for r in access_records(caplog)]
    assert lines[0].startswith("GET /v0/nope/123 404 ") and "secret" not in lines[0]
    assert lines[1].startswith("DELETE /v0/things 405 ")
    assert [(r.route, r.matched) for r in observed] == [("/v0/nope/123", False), ("/v0/things", False)]


def test_a_client_id_is_kept_when_sane_and_a_server_error_quotes_it(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = client.get("/v0/boom", headers={"x-request-id": "bad id\twith tab"})
    rid = response.headers["x-request-id"]
    assert rid.startswith("req_")
    assert response.json()["error"]["message"] == f"Node 'a' failed (request id: {rid})"
    [line] = access_records(caplog)
    assert line.access.status == 502 and line.access.request_id == rid  # type: ignore[attr-defined]


def test_polled_routes_are_debug_when_they_succeed(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/health")
    client.get("/v0/poll")
    client.get("/v0/things/x")
    levels = [(r.access.route, r.levelno) for r in access_records(caplog)]  # type: ignore[attr-defined]
    assert levels == [
        ("/health", logging.DEBUG),
        ("/v0/poll", logging.DEBUG),
        ("/v0/things/{thing_id}", logging.INFO),
    ]


def test_notes_outside_a_request_go_nowhere() -> None:
    assert current_request() is None
    note_request(images=1, generation_s=1.0)  # no error, nothing to add to


@pytest.mark.parametrize(
    ("seconds", "steps", "expected"),
    [
        ("2.5", "40", (2.5, 40)),
        ("2.5", None, (2.5, 0)),
        ("2.5", "-3", (2.5, 0)),
        ("2.5", "99999999999999", (2.5, 0)),
        ("nan", "40", (0.0, 0)),
        ("inf", "40", (0.0, 0)),
        ("-1", "40", (0.0, 0)),
        ("0", "40", (0.0, 0)),
        ("1e12", "40", (0.0, 0)),
        ("fast", "40", (0.0, 0)),
        (None, "40", (0.0, 0)),
    ],
)
def test_a_nodes_report_of_its_work_is_taken_only_when_it_is_a_sane_number(
    seconds: str | None, steps: str | None, expected: tuple[float, int]
) -> None:
    record = RequestRecord("r", "POST")
    headers = {
        k: v for k, v in ((GENERATION_SECONDS_HEADER, seconds), (STEPS_HEADER, steps)) if v is not None
    }
    token = _record.set(record)
    try:
        note_node_report(headers)
    finally:
        _record.reset(token)
    assert (record.generation_s, record.steps) == expected
    assert not math.isnan(record.generation_s)


# --- formats --------------------------------------------------------------------------------
def emit(fmt: str, logger: str, message: str, *args: Any, rid: str | None = None, **kw: Any) -> str:
    """What the handler that ``log_format.configure`` installs writes for one record."""
    stream = io.StringIO()
    root, httpx_logger, target = logging.getLogger(), logging.getLogger("httpx"), logging.getLogger(logger)
    saved = (root.level, list(root.handlers), httpx_logger.level, target.level)
    try:
        log_format.configure("DEBUG", fmt, stream=stream)
        # Other tests' uvicorn servers set uvicorn's loggers to their own level (WARNING).
        target.setLevel(logging.DEBUG)
        token = request_id.bind(rid) if rid else None
        try:
            logging.getLogger(logger).info(message, *args, **kw)
        finally:
            if token is not None:
                request_id.unbind(token)
    finally:
        for handler in [h for h in root.handlers if h not in saved[1]]:
            root.removeHandler(handler)
        root.setLevel(saved[0])
        httpx_logger.setLevel(saved[2])
        target.setLevel(saved[3])
    return stream.getvalue()


def test_json_lines_carry_the_request_id_the_request_fields_and_any_extra() -> None:
    record = RequestRecord("req-9", "GET", route="/v1/models", status=200, model="m")
    out = emit("json", ACCESS, "%s", record.line(), extra={"access": record, "request_id": "req-9"})
    [line] = out.splitlines()
    data = json.loads(line)
    assert data["logger"] == ACCESS and data["level"] == "INFO" and data["message"] == record.line()
    assert (data["request_id"], data["route"], data["status"], data["model"]) == (
        "req-9",
        "/v1/models",
        200,
        "m",
    )
    assert data["time"].endswith("+00:00")

    inside = json.loads(emit("json", "llmlb.node.sd", "job %d done", 3, rid="req-10", extra={"job": 3}))
    assert (inside["message"], inside["request_id"], inside["job"]) == ("job 3 done", "req-10", 3)

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = emit("json", "llmlb.router", "failed", exc_info=True)
    [one_line] = failed.splitlines()  # the traceback is inside the object, not on lines of its own
    assert "ValueError: bad" in json.loads(one_line)["exception"]


def test_text_lines_name_the_request_and_uvicorn_shows_as_the_server() -> None:
    inside = emit("text", "llmlb.node.sd", "job 3 done", rid="req-10")
    assert inside.rstrip("\n").endswith("INFO    llmlb.node.sd: job 3 done (request req-10)")
    named = emit("text", "llmlb.forward", "node a failed (request req-10)", rid="req-10")
    assert named.count("req-10") == 1
    server = emit("text", "uvicorn.error", "Uvicorn running on http://127.0.0.1:1")
    assert " llmlb.server: Uvicorn running" in server and "uvicorn.error" not in server
    assert json.loads(emit("json", "uvicorn.error", "Started server process"))["logger"] == "llmlb.server"


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        log_format.formatter("xml")
