"""Error shaping, as pure functions: what a client sees of an upstream's error body, of a node's
5xx, of a body that fails strict decoding, and of a server-side error (its request id).

Every error reaches the client as OpenAI's ``{"error": {message, type, param, code}}`` (the
official SDKs read nothing else), one printable line, bounded, and never with what a node said
in a 5xx (that is the operator's business: it is logged).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from llmlb_core.server.bodies import MAX_JSON_DEPTH, check_json_bytes
from llmlb_core.server.errors import NodeFailure, OpenAIError, from_msgspec_error
from llmlb_core.server.request_id import RequestIdMiddleware
from llmlb_core.upstream.client import node_failure, openai_error_content


def shaped(
    status: int, body: bytes, content_type: str = "application/json", node: str = ""
) -> dict[str, Any]:
    """The client's error object for an upstream ``status`` answered with ``body``."""
    content = openai_error_content(status, body, node_name=node, content_type=content_type)
    error: dict[str, Any] = json.loads(content)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- an upstream 4xx, whatever the server's shape ------------------------------------------
def test_openai_shape_keeps_every_field_and_names_the_node() -> None:
    body = b'{"error":{"message":"n is too big","type":"invalid_request_error","param":"n","code":"n_max"}}'
    assert shaped(400, body, node="gpu-1") == {
        "message": "n is too big (node 'gpu-1')",
        "type": "invalid_request_error",
        "param": "n",
        "code": "n_max",
    }


def test_vllm_object_error_shape() -> None:
    body = b'{"object":"error","message":"context too long","type":"BadRequestError","param":null,"code":400}'
    assert shaped(400, body) == {
        "message": "context too long",
        "type": "BadRequestError",
        "param": None,
        "code": "400",  # an integer code becomes its string
    }


def test_fastapi_detail_string_and_list() -> None:
    assert shaped(404, b'{"detail":"Not Found"}') == {
        "message": "Not Found",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    listed = shaped(422, b'{"detail":[{"loc":["body","n"],"msg":"bad"}]}')
    assert listed["message"] == '[{"loc":["body","n"],"msg":"bad"}]'


def test_ollama_error_text() -> None:
    error = shaped(404, b'{"error":"model \\"llama3\\" not found, try pulling it first"}')
    assert error["message"] == 'model "llama3" not found, try pulling it first'
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", ""])
def test_plain_text_becomes_the_message(content_type: str) -> None:
    error = shaped(400, b"bad request:\n  prompt is empty\r\n", content_type)
    assert error["message"] == "bad request: prompt is empty"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<!DOCTYPE html><html><body><h1>400 Bad Request</h1></body></html>", "text/html"),
        (b"<html><body>nginx</body></html>", "text/plain"),  # markup whatever it claims
        (b"{not json", "application/json"),
        (b"[1, 2, 3]", "application/json"),  # JSON, but not an object
        (b"", ""),
        (b'{"error": null}', "application/json"),
    ],
)
def test_unreadable_bodies_state_only_the_status(body: bytes, content_type: str) -> None:
    error = shaped(413, body, content_type, node="n1")
    assert error["message"] == "The upstream server answered HTTP 413 (node 'n1')"
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507])
def test_a_5xx_body_is_never_shown(status: int) -> None:
    body = b'{"error":{"message":"Traceback: /srv/secret.py line 3","type":"oops","code":"leak"}}'
    assert shaped(status, body) == {
        "message": f"The upstream server answered HTTP {status}",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_control_characters_and_newlines_become_one_line() -> None:
    body = json.dumps({"error": {"message": "line 1\nline 2\r\n\tx\x00y\x1b[31mred\u2028end"}}).encode()
    message = shaped(400, body)["message"]
    assert message == "line 1 line 2 x y [31mred end"
    assert message.isprintable()


def test_long_values_are_bounded() -> None:
    body = json.dumps(
        {"error": {"message": "m" * 50_000, "type": "t" * 65, "param": "p" * 64, "code": "c" * 65}}
    ).encode()
    error = shaped(400, body)
    assert error["message"] == "m" * 2000
    assert error["type"] == "invalid_request_error"  # too long: the status's own type
    assert error["param"] == "p" * 64  # 64 characters is the most kept
    assert error["code"] is None


@pytest.mark.parametrize(
    ("field", "value", "kept"),
    [
        ("code", 42, "42"),
        ("code", True, None),  # a bool is not a code
        ("code", 1.5, None),
        ("param", 3, None),  # only codes may be numbers
        ("param", "a\nb", None),
        ("type", {"nested": 1}, "invalid_request_error"),
    ],
)
def test_non_string_fields_are_dropped(field: str, value: Any, kept: Any) -> None:
    error = shaped(400, json.dumps({"error": {"message": "x", field: value}}).encode())
    assert error[field] == kept


def test_a_deeply_nested_error_body_is_not_parsed() -> None:
    body = b'{"error":' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}"
    assert shaped(400, body)["message"] == "The upstream server answered HTTP 400"


# --- a node's 5xx ---------------------------------------------------------------------------
def test_a_node_5xx_keeps_a_plain_code_token_only() -> None:
    failure = node_failure(503, b'{"error":{"message":"secret","code":"model_load_failed"}}', "gpu-1")
    assert isinstance(failure, NodeFailure)
    assert (failure.status, failure.type, failure.code) == (503, "server_error", "model_load_failed")
    assert failure.message == "Node 'gpu-1' failed (HTTP 503)"  # never what the node said


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"code":"not a token!"}}',
        b'{"error":{"code":"' + b"x" * 65 + b'"}}',
        b'{"error":"model_load_failed"}',  # a string error carries no code
        b'{"code":"model_load_failed"}',  # not under "error"
        b"Internal Server Error",
        b"",
    ],
)
def test_a_node_5xx_without_a_plain_code_is_upstream_error(body: bytes) -> None:
    assert node_failure(500, body, "n").code == "upstream_error"


def test_a_numeric_node_code_is_kept_as_a_token() -> None:
    assert node_failure(500, b'{"error":{"code":1234}}', "n").code == "1234"


@pytest.mark.parametrize(
    ("status", "shown"), [(500, 500), (502, 502), (503, 503), (504, 504), (501, 502), (507, 502), (599, 502)]
)
def test_only_common_5xx_statuses_are_passed_on(status: int, shown: int) -> None:
    assert node_failure(status, b"", "n").status == shown


# --- strict decoding errors -----------------------------------------------------------------
class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: str


class Request(msgspec.Struct, forbid_unknown_fields=True):
    prompt: str
    n: int = 1
    messages: list[Message] = msgspec.field(default_factory=list)


def decode_error(body: bytes) -> OpenAIError:
    with pytest.raises(msgspec.DecodeError) as exc:
        msgspec.json.decode(body, type=Request)
    return from_msgspec_error(exc.value)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt":"x","n":"2"}', "n"),  # wrong type
        (b'{"n":2}', "prompt"),  # missing
        (b'{"prompt":"x","size":"big"}', "size"),  # unknown
        (b'{"prompt":"x","messages":[{"role":1}]}', "messages"),  # nested: the top-level field
        (b'{"prompt":"x","messages":[{"role":"user","name":"x"}]}', "messages"),
    ],
)
def test_a_validation_error_names_the_field(body: bytes, param: str) -> None:
    error = decode_error(body)
    assert (error.status, error.param, error.code) == (400, param, "invalid_value")
    assert error.type == "invalid_request_error" and error.message.startswith("Invalid request: ")


def test_malformed_json_is_invalid_json_without_a_param() -> None:
    error = decode_error(b'{"prompt":')
    assert (error.status, error.param, error.code) == (400, None, "invalid_json")
    assert error.message == "Invalid JSON body: Input data was truncated"


# --- the body of an OpenAIError -------------------------------------------------------------
async def body_inside_a_request(error: OpenAIError, request_id: str) -> dict[str, Any]:
    """``error.body()`` as built while the request-id middleware runs a request."""
    bodies: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        bodies.append(error.body())

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "headers": [(b"x-request-id", request_id.encode())]}
    await RequestIdMiddleware(app)(scope, receive, send)  # type: ignore[arg-type]
    return bodies[0]


async def test_a_5xx_body_quotes_the_request_id() -> None:
    body = await body_inside_a_request(OpenAIError(502, "Node 'a' failed"), "req-42")
    assert body == {
        "error": {
            "message": "Node 'a' failed (request id: req-42)",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_a_4xx_body_and_a_body_outside_a_request_do_not() -> None:
    inside = await body_inside_a_request(OpenAIError(400, "bad n", param="n"), "req-42")
    assert inside["error"] == {
        "message": "bad n",
        "type": "invalid_request_error",
        "param": "n",
        "code": None,
    }
    assert OpenAIError(503, "busy").body()["error"]["message"] == "busy"


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (401, "invalid_request_error", "invalid_api_key"),
        (403, "permission_error", "insufficient_scope"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", None),
        (418, "invalid_request_error", None),
        (599, "server_error", None),
    ],
)
def test_type_and_code_default_by_status(status: int, type_: str, code: str | None) -> None:
    error = OpenAIError(status, "x")
    assert (error.type, error.code) == (type_, code)


# --- hostile JSON bytes ---------------------------------------------------------------------
def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


def test_bad_utf8_is_refused_with_its_offset() -> None:
    with pytest.raises(OpenAIError) as bad:
        check_json_bytes(b'{"prompt": "ok \xc3\x28"}')
    assert (bad.value.status, bad.value.code) == (400, "invalid_json")
    assert bad.value.message == "Request body is not valid UTF-8 (at byte 15)"


def test_valid_utf8_passes() -> None:
    check_json_bytes('{"prompt": "日本語 é 🎨"}'.encode())


def test_depth_64_passes_and_65_is_refused() -> None:
    assert MAX_JSON_DEPTH == 64
    check_json_bytes(nested(64))
    check_json_bytes(b'{"a":' * 63 + b"{}" + b"}" * 63)  # objects count like arrays
    with pytest.raises(OpenAIError) as deep:
        check_json_bytes(nested(65))
    assert deep.value.status == 400 and "nested deeper than 64 levels" in deep.value.message
    with pytest.raises(OpenAIError):
        check_json_bytes(b'{"a":' * 64 + b"{}" + b"}" * 64)


def test_brackets_inside_strings_do_not_count() -> None:
    check_json_bytes(b'{"p":"' + b"[" * 500 + b'"}')
    check_json_bytes(b'{"p":"\\"' + b"[" * 500 + b'"}')  # an escaped quote does not end the string


def test_unbalanced_brackets_beyond_the_limit_are_refused() -> None:
    with pytest.raises(OpenAIError):
        check_json_bytes(b"[" * 100_000)


def test_a_custom_depth() -> None:
    check_json_bytes(nested(3), max_depth=3)
    with pytest.raises(OpenAIError) as deep:
        check_json_bytes(nested(4), max_depth=3)
    assert "deeper than 3 levels" in deep.value.message
