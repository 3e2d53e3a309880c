"""Node answers are untrusted input; users see no upstream internals (issue 8, items 5 and 10).

A real router process, and a hostile node that is a FAKE (``tests.support.fake_node.FakeNode``: a
loopback HTTP server that registers with a node key and answers what each test tells it to).
Every bad answer, on the buffered and on the relayed path, must reach the client as an
OpenAI-shaped 502 ``bad_upstream_response`` and leave the node marked suspect; a node's 4xx
reaches the client OpenAI-shaped; what a node says in a 5xx is logged in one line and never
shown; every 5xx message quotes the request id that the response header carries.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.fake_node import Answer, FakeNode, images_answer, png_b64
from tests.support.hostile_util import expect_error
from tests.support.images_util import gradient, png_bytes
from tests.support.servers import ADMIN_KEY, Proc, admin_get, create_key, router_proc

MB = 1024 * 1024
# A router-wide cap on node answers for this module (the images bound is tighter still).
ANSWER_CAP = 16 * MB
MODELS = [
    {"id": "img", "capabilities": ["image_generation", "image_edit"], "runtime": "stable_diffusion"},
    {"id": "chat", "capabilities": ["chat_completion", "embeddings"], "runtime": "openai_compatible"},
    {"id": "voice", "capabilities": ["text_to_speech", "speech_to_text"], "runtime": "openai_compatible"},
]
GENERATIONS = "/v1/images/generations"
IMAGE = {"model": "img", "prompt": "a cat", "size": "256x256"}


class System:
    def __init__(self, router: Proc, node: FakeNode, api_key: str, data_dir: Path) -> None:
        self.router = router
        self.node = node
        self.api_key = api_key
        self.data_dir = data_dir

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.router.url}{path}",
            json=body,
            headers={"authorization": f"Bearer {self.api_key}", **headers},
            timeout=60,
        )

    def node_view(self, node_id: str | None = None) -> dict[str, Any]:
        wanted = node_id or self.node.node_id
        return next(n for n in admin_get(self.router.url, "/v0/nodes")["data"] if n["id"] == wanted)

    def stored_images(self) -> list[str]:
        folder = self.data_dir / "images"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("hostile-nodes")
    data_dir = tmp / "router-data"
    router = router_proc(
        tmp,
        data_dir=data_dir,
        env={
            "LLMLB_NODE_TIMEOUT_S": "3",
            "LLMLB_MAX_UPSTREAM_ANSWER_BYTES": str(ANSWER_CAP),
            "LLMLB_PLUGIN__IMAGES__URL_TTL_MINUTES": "5",
        },
    )
    node: FakeNode | None = None
    try:
        router.start().wait_healthy()
        node = FakeNode(router.url, create_key(router.url, ["node"], name="hostile"), "hostile-1", MODELS)
        node.start()
        yield System(router, node, create_key(router.url, ["api"], name="client"), data_dir)
    finally:
        if node is not None:
            node.stop()
        router.stop()


def assert_bad_answer(system: System, response: httpx.Response) -> None:
    """A 502 ``bad_upstream_response`` that quotes its request id, and the node now suspect."""
    error = expect_error(response, 502, "bad_upstream_response")
    assert error["type"] == "server_error"
    assert f"(request id: {response.headers['x-request-id']})" in error["message"]
    view = system.node_view()
    assert view["suspect"] is True, view
    assert "bad answer" in view["recent_failures"][-1]["reason"], view


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG_SIG = b"\x89PNG\r\n\x1a\n"
HTML = b"<html><body><script>fetch('/v0/keys')</script></body></html>"


BAD_IMAGE_ANSWERS = {
    "garbage bytes": Answer(body=bytes(range(256)) * 4),
    "text/html": Answer(content_type="text/html", body=b"<html><body>hello</body></html>"),
    "wrong schema": Answer.json({"object": "list", "data": "nope"}),
    "unknown field": Answer.json({"created": 1, "data": [{"b64_json": png_b64()}], "x": 1}),
    "invalid base64": Answer.json({"created": 1, "data": [{"b64_json": "@@@not base64@@@"}]}),
    "truncated base64": Answer.json({"created": 1, "data": [{"b64_json": png_b64()[:-3]}]}),
    "not an image": Answer.json({"created": 1, "data": [{"b64_json": b64(b"<script>x</script>")}]}),
    "a PNG signature, then HTML": Answer.json({"created": 1, "data": [{"b64_json": b64(PNG_SIG + HTML)}]}),
    "HTML after a PNG's IEND": Answer.json(
        {"created": 1, "data": [{"b64_json": b64(base64.b64decode(png_b64()) + HTML)}]}
    ),
    "HTML after a JPEG's end": Answer.json(
        {
            "created": 1,
            "data": [{"b64_json": b64(png_bytes(gradient(8, 8), "JPEG") + HTML)}],
            "output_format": "jpeg",
        }
    ),
    "html output_format": images_answer(output_format="html"),
    "CRLF output_format": images_answer(output_format="png\r\nx-evil: 1"),
    "url instead of b64_json": Answer.json({"created": 1, "data": [{"url": "http://evil.example/x.png"}]}),
    "two images for one": images_answer(count=2),
    "invalid UTF-8": Answer(
        body=b'{"created": 1, "data": [{"b64_json": "' + png_b64().encode() + b'"}], "quality": "\xff\xfe"}'
    ),
    "redirect": Answer(status=302, body=b""),
    "204 no content": Answer(status=204, body=b""),
}


def test_a_well_formed_answer_is_served(system: System) -> None:
    """The control: the fake's good answer passes, in both response formats."""
    system.node.answers[GENERATIONS] = images_answer()
    relayed = system.post(GENERATIONS, {**IMAGE, "response_format": "b64_json"})
    assert relayed.status_code == 200, relayed.text
    assert base64.b64decode(relayed.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    as_url = system.post(GENERATIONS, {**IMAGE, "response_format": "url"})
    assert as_url.status_code == 200, as_url.text
    image = httpx.get(as_url.json()["data"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_a_stored_image_is_served_as_that_image_and_nothing_else(system: System, output_format: str) -> None:
    """Whatever its bytes, a stored file is no page of the router's origin: its image type, not
    sniffed, a policy that loads and runs nothing in a sandbox, inline under its own name."""
    data = png_bytes(gradient(16, 16), output_format.upper())
    system.node.answers[GENERATIONS] = Answer.json(
        {"created": 1, "data": [{"b64_json": b64(data)}], "output_format": output_format}
    )
    answer = system.post(GENERATIONS, {**IMAGE, "response_format": "url", "output_format": output_format})
    assert answer.status_code == 200, answer.text
    url = answer.json()["data"][0]["url"]
    name = url.rpartition("/")[2]
    assert name.endswith(f".{output_format}")
    image = httpx.get(url, timeout=10)
    assert image.status_code == 200 and image.content == data
    assert image.headers["content-type"] == f"image/{output_format}"
    assert image.headers.get_list("x-content-type-options") == ["nosniff"]
    policy = [part.strip() for part in image.headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in policy and "sandbox" in policy
    assert not [p for p in policy if "script" in p or p.startswith("img-src")], policy
    assert image.headers["content-disposition"] == f'inline; filename="{name}"'


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
@pytest.mark.parametrize("case", sorted(BAD_IMAGE_ANSWERS))
def test_a_bad_images_answer_is_a_502_and_the_node_suspect(
    system: System, case: str, response_format: str
) -> None:
    system.node.answers[GENERATIONS] = BAD_IMAGE_ANSWERS[case]
    files_before = system.stored_images()
    response = system.post(GENERATIONS, {**IMAGE, "response_format": response_format})
    assert_bad_answer(system, response)
    assert system.stored_images() == files_before  # nothing was written


def test_a_job_of_several_images_is_checked_image_by_image(system: System) -> None:
    good = images_answer(count=2)
    bad = json.loads(good.body)
    bad["data"][1]["b64_json"] = "!!!!"
    system.node.answers[GENERATIONS] = Answer.json(bad)
    assert_bad_answer(system, system.post(GENERATIONS, {**IMAGE, "n": 2, "response_format": "url"}))
    system.node.answers[GENERATIONS] = good
    for fmt in ("url", "b64_json"):
        answer = system.post(GENERATIONS, {**IMAGE, "n": 2, "response_format": fmt})
        assert answer.status_code == 200 and len(answer.json()["data"]) == 2, answer.text


def router_rss(system: System) -> int:
    assert system.router.popen is not None
    return int(psutil.Process(system.router.popen.pid).memory_info().rss)


@pytest.mark.parametrize("pieces", [0, 50], ids=["declared-length", "chunked"])
def test_a_50_mb_answer_to_a_small_image_is_refused_unread(system: System, pieces: int) -> None:
    """The images bound (every pixel in RGBA, base64, plus room) is far below 50 MB for a 64x64
    or 256x256 image; the router stops reading there and never holds the answer."""
    body = b'{"created": 1, "data": [{"b64_json": "' + b"A" * (50 * MB) + b'"}]}'
    system.node.answers[GENERATIONS] = Answer(body=body, pieces=pieces)
    before = router_rss(system)
    started = time.monotonic()
    for size in ("256x256", "auto"):  # auto: the demo model's 64x64
        response = system.post(GENERATIONS, {**IMAGE, "size": size, "response_format": "b64_json"})
        assert_bad_answer(system, response)
    assert time.monotonic() - started < 20
    assert router_rss(system) - before < 30 * MB


def test_an_answer_just_over_the_images_bound_is_refused(system: System) -> None:
    """2 MB (under the router-wide cap) for one 256x256 image is more than any encoding of it."""
    padded = {"created": 1, "data": [{"b64_json": png_b64(), "revised_prompt": "x" * (2 * MB)}]}
    system.node.answers[GENERATIONS] = Answer.json(padded)
    assert_bad_answer(system, system.post(GENERATIONS, {**IMAGE, "response_format": "url"}))


def test_a_node_html_4xx_reaches_the_client_openai_shaped(system: System) -> None:
    system.node.answers[GENERATIONS] = Answer(
        status=400, content_type="text/html", body=b"<html><h1>400 Bad Request</h1><p>nginx</p></html>"
    )
    for fmt in ("b64_json", "url"):
        error = expect_error(system.post(GENERATIONS, {**IMAGE, "response_format": fmt}), 400)
        assert "<" not in error["message"] and "nginx" not in error["message"], error
    # An OpenAI-looking body with the wrong types is rebuilt field by field.
    system.node.answers[GENERATIONS] = Answer.json(
        {"error": {"message": "bad\r\nforged line", "type": 7, "param": ["x"], "code": {"a": 1}}}, status=422
    )
    error = expect_error(system.post(GENERATIONS, IMAGE), 422)
    assert error["message"].startswith("bad forged line"), error
    assert error["type"] == "invalid_request_error" and error["param"] is None and error["code"] is None
    # Deeply nested JSON from a node is not parsed recursively: still a clean error.
    system.node.answers["/v1/chat/completions"] = Answer(status=400, body=b"[" * 100_000)
    chat = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    expect_error(system.post("/v1/chat/completions", chat), 400)


def test_a_node_5xx_body_is_logged_in_one_line_never_shown(system: System) -> None:
    secret = "SECRET-TRACE at /srv/node/engine.py line 7 ClientConnectorError"
    system.node.answers[GENERATIONS] = Answer.json(
        {"error": {"message": secret, "type": "server_error", "code": "engine_crash"}}, status=500
    )
    log_start = len(system.router.log())
    response = system.post(GENERATIONS, IMAGE, **{"x-request-id": "client-trace-0042"})
    error = expect_error(response, 500, "engine_crash")
    assert response.headers["x-request-id"] == "client-trace-0042"
    assert "SECRET" not in error["message"] and "ClientConnectorError" not in error["message"]
    assert "(request id: client-trace-0042)" in error["message"]
    logged = system.router.log()[log_start:]
    lines = [line for line in logged.splitlines() if "SECRET-TRACE" in line]
    assert len(lines) == 1 and "client-trace-0042" in lines[0], lines
    assert "Traceback" not in logged


def test_an_unreachable_node_names_no_internal_class(system: System) -> None:
    advert = {"id": "ghost-chat", "capabilities": ["chat_completion"], "runtime": "openai_compatible"}
    ghost = FakeNode(system.router.url, create_key(system.router.url, ["node"]), "ghost-1", [advert])
    ghost.start()
    ghost.server.stop()  # registered and heartbeating; its port now refuses connections
    try:
        chat = {"model": "ghost-chat", "messages": [{"role": "user", "content": "hi"}]}
        response = system.post("/v1/chat/completions", chat, **{"x-request-id": "bad id with spaces"})
        error = expect_error(response, 502)
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"req_[0-9a-f]{24}", request_id), request_id  # a bad client id is replaced
        assert f"(request id: {request_id})" in error["message"]
        assert not re.search(r"[A-Z][a-z]+(Error|Exception|Timeout)", error["message"]), error
    finally:
        ghost.stop()


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("stream", "answer"),
    [
        (False, Answer(content_type="text/html", body=b"<html>hi</html>")),
        (False, Answer(body=b"[1, 2, 3]")),
        (False, Answer(body=b'{"id": "x", "choices": [')),
        (False, Answer(body=b'{"a": "\xff"}')),
        (False, Answer(status=301, body=b"")),
        (True, Answer(content_type="text/html", body=b"<html>hi</html>")),
        (True, Answer(status=307, content_type="text/event-stream", body=b"data: {}\n\n")),
    ],
)
def test_a_bad_text_answer_is_a_502(system: System, stream: bool, answer: Answer) -> None:
    system.node.answers["/v1/chat/completions"] = answer
    assert_bad_answer(system, system.post("/v1/chat/completions", {**CHAT, "stream": stream}))


def test_a_relayed_stream_over_the_cap_ends_with_an_error_event(system: System) -> None:
    event = b'data: {"choices": [{"delta": {"content": "' + b"a" * 1000 + b'"}}]}\n\n'
    system.node.answers["/v1/chat/completions"] = Answer(
        content_type="text/event-stream", body=event * (ANSWER_CAP // len(event) + 100), pieces=200
    )
    with httpx.stream(
        "POST",
        f"{system.router.url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"authorization": f"Bearer {system.api_key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_bytes())
    assert len(received) <= ANSWER_CAP + 4096
    last = received.rstrip().rsplit(b"\n\n", 1)[-1]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "bad_upstream_response" and error["type"] == "server_error"
    assert system.node_view()["suspect"] is True


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        (
            "/v1/audio/speech",
            {"model": "voice", "voice": "alloy", "input": "hi"},
            Answer(content_type="text/html", body=b"<html>x</html>"),
        ),
        (
            "/v1/audio/speech",
            {"model": "voice", "voice": "alloy", "input": "hi"},
            Answer(content_type="audio/wav", body=b"RIFF" + bytes(ANSWER_CAP)),
        ),
        (
            "/v1/embeddings",
            {"model": "chat", "input": "x"},
            Answer(content_type="application/octet-stream", body=b"\x00\x01"),
        ),
    ],
)
def test_a_bad_audio_or_embeddings_answer_is_a_502(
    system: System, path: str, body: dict[str, Any], answer: Answer
) -> None:
    system.node.answers[path] = answer
    assert_bad_answer(system, system.post(path, body))


def test_a_bad_transcription_answer_is_a_502(system: System) -> None:
    system.node.answers["/v1/audio/transcriptions"] = Answer(content_type="text/html", body=b"<b>x</b>")
    response = httpx.post(
        f"{system.router.url}/v1/audio/transcriptions",
        data={"model": "voice"},
        files={"file": ("a.wav", b"RIFF" + bytes(1000), "audio/wav")},
        headers={"authorization": f"Bearer {system.api_key}"},
        timeout=30,
    )
    assert_bad_answer(system, response)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (Answer(body=b'{"object": "list", "data": [{"id": "\xff"}]}'), "unreadable"),
        (Answer(body=b'{"data": ' + b"[" * 100_000), "unreadable"),
        (Answer(body=b'{"object": "list", "data": []' + b" " * (5 * MB) + b"}"), "over the limit"),
    ],
    ids=["invalid UTF-8", "deep", "5 MB"],
)
def test_an_endpoint_with_a_hostile_model_list_is_offline_with_a_reason(
    system: System, answer: Answer, says: str
) -> None:
    """Endpoint health checks read ``GET /v1/models``: bounded, and decoded without a traceback."""
    evil = FakeNode(system.router.url, "unused", "unused", [])
    evil.answers["/v1/models"] = answer
    evil.server.start()
    log_start = len(system.router.log())
    try:
        created = httpx.post(
            f"{system.router.url}/v0/endpoints",
            json={"name": "evil", "url": evil.url},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["status"] == "offline" and says in view["last_error"], view
        assert "Traceback" not in system.router.log()[log_start:]
    finally:
        httpx.delete(
            f"{system.router.url}/v0/endpoints/evil", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        evil.server.stop()
