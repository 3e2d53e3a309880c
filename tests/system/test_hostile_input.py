"""Hostile client bytes (issue 8, items 3, 4 and 12): real router, StableDiffusion node and
backend processes, attacked the way a key holder could.

- Every JSON route answers invalid UTF-8 and nesting past 64 levels with an OpenAI-shaped 400,
  never a 500 (was: ``UnicodeDecodeError``, ``RecursionError``), and nothing reaches a node.
- A client's multipart file name never reaches a header of the router's request to a node:
  images edits are re-encoded with the router's own part names and file names (checked on a
  recording FAKE node, ``tests.support.fake_node``, and on the real node), and audio uploads, relayed
  byte for byte, are refused unless every multipart parser reads their part headers alike.
- Per-model defaults are checked against the capability's schema when an admin sets them.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import multipart as multipart_lib
import pytest

from tests.support.fake_node import FakeNode, images_answer
from tests.support.hostile_util import JSON_ROUTES, FullSystem, expect_error, field, full_system, multipart
from tests.support.images_util import gradient, png_bytes
from tests.support.servers import Proc, create_key, node_proc, router_proc

JSON = "application/json"
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


def nested(depth: int) -> bytes:
    return b'{"model": "tiny-chat", "x": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


HOSTILE_BODIES = {
    "invalid UTF-8": b'{"model": "tiny-chat\xff", "name": "x"}',
    "overlong UTF-8": b'{"model": "\xc0\xaf"}',
    "UTF-8 surrogate": b'{"model": "\xed\xa0\x80"}',
    "invalid UTF-8 in an unknown field": json.dumps(CHAT).encode()[:-1] + b', "extra": "\xc3\x28"}',
    "100k [": b"[" * 100_000,
    '50k {"a":': b'{"a":' * 50_000,
    "nested 65 deep": nested(65),
    "nested 10000 deep, balanced": nested(10_000),
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[FullSystem]:
    with full_system(tmp_path_factory.mktemp("hostile-input"), models_dir) as system:
        yield system


@pytest.fixture(scope="module")
def recorder(system: FullSystem) -> Iterator[FakeNode]:
    """A FAKE images node that records what the router sends it (model ``rec-img``)."""
    advert = {"id": "rec-img", "capabilities": ["image_generation"], "runtime": "stable_diffusion"}
    node = FakeNode(system.url, system.node_key, "recorder-1", [advert]).start()
    node.answers["/v1/images/edits"] = images_answer()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize(("path", "scope"), JSON_ROUTES)
@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_hostile_json_is_a_400_on_every_route(system: FullSystem, path: str, scope: str, case: str) -> None:
    seen = len(system.backend.state.requests)
    error = expect_error(system.post(path, HOSTILE_BODIES[case], JSON, scope), 400, "invalid_json")
    assert "UnicodeDecodeError" not in error["message"] and "Recursion" not in error["message"]
    assert len(system.backend.state.requests) == seen  # nothing reached a backend


def test_nesting_up_to_64_levels_is_fine(system: FullSystem) -> None:
    body = {**CHAT, "x_extra": json.loads(b"[" * 63 + b"1" + b"]" * 63)}
    response = system.post("/v1/chat/completions", json.dumps(body).encode(), JSON)
    assert response.status_code == 200, response.text
    assert system.backend.state.requests[-1]["body"]["x_extra"] == body["x_extra"]


def test_a_sane_request_id_is_kept_and_any_other_replaced(system: FullSystem) -> None:
    for sent, kept in (("trace-42.a:b_c", True), ("x" * 129, False), ("a b", False), ("a\tb", False)):
        response = httpx.post(
            f"{system.url}/v1/chat/completions",
            json=CHAT,
            headers={**system.auth("api"), "x-request-id": sent},
            timeout=30,
        )
        assert response.status_code == 200
        assert (response.headers["x-request-id"] == sent) is kept, response.headers["x-request-id"]
        if not kept:
            assert response.headers["x-request-id"].startswith("req_")


# --- multipart to nodes: images --------------------------------------------------------------

EVIL = "EVIL-MARKER"
HOSTILE_IMAGE_HEADERS = {
    "backslash-escaped quote": f'filename="{EVIL}\\"; name=\\"mask.png"',
    "percent-encoded quote": f'filename="{EVIL}%22; name=%22mask.png"',
    "percent-encoded CR/LF": f'filename="{EVIL}%0D%0AContent-Type: text/html"',
    "second filename": f'filename="{EVIL}.png"; filename="mask.png"',
}


def edit_body(disposition_tail: str, model: str) -> tuple[bytes, str]:
    image = png_bytes(gradient(64, 64))
    head = f'Content-Disposition: form-data; name="image"; {disposition_tail}\r\nContent-Type: image/png'
    return multipart(
        [
            field("model", model),
            field("prompt", "edit"),
            field("steps", "1"),
            field("response_format", "b64_json"),
            (head.encode(), image),
        ]
    )


def node_parts(body: bytes, content_type: str) -> list[tuple[str, str | None, str | None]]:
    """(name, filename, content type) of every part, as the node's parser reads them."""
    boundary = multipart_lib.parse_options_header(content_type)[1]["boundary"]
    parser = multipart_lib.MultipartParser(io.BytesIO(body), boundary, strict=True)
    return [(part.name, part.filename, part.content_type) for part in parser]


@pytest.mark.parametrize("case", list(HOSTILE_IMAGE_HEADERS))
def test_image_part_names_and_file_names_are_the_routers_own(
    system: FullSystem, recorder: FakeNode, case: str
) -> None:
    body, content_type = edit_body(HOSTILE_IMAGE_HEADERS[case], "rec-img")
    response = system.post("/v1/images/edits", body, content_type)
    assert response.status_code == 200, response.text  # the router reads one image part
    sent = recorder.received[-1]
    assert EVIL.encode() not in sent.body
    files = [p for p in node_parts(sent.body, sent.headers["content-type"]) if p[1] is not None]
    assert files == [("image", "image-0.png", "image/png")], files


@pytest.mark.parametrize("case", list(HOSTILE_IMAGE_HEADERS))
def test_a_hostile_file_name_cannot_turn_an_image_into_another_part(system: FullSystem, case: str) -> None:
    """The real node gets the one image the router read (it used to answer 'image is required':
    the file name had made the image part a 'mask.png' part)."""
    body, content_type = edit_body(HOSTILE_IMAGE_HEADERS[case], "demo")
    response = system.post("/v1/images/edits", body, content_type)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


def test_raw_cr_lf_in_an_image_file_name_is_refused_or_re_encoded(
    system: FullSystem, recorder: FakeNode
) -> None:
    image = png_bytes(gradient(64, 64))
    head = (
        f'Content-Disposition: form-data; name="image"; filename="{EVIL}\r\n'
        'Content-Disposition: form-data; name="mask"; filename="m.png"\r\nContent-Type: image/png'
    ).encode()
    body, content_type = multipart([field("model", "rec-img"), field("prompt", "x"), (head, image)])
    before = len(recorder.received)
    response = system.post("/v1/images/edits", body, content_type)
    if response.status_code == 200:
        assert EVIL.encode() not in recorder.received[-1].body
    else:
        expect_error(response, 400)
        assert len(recorder.received) == before


# --- multipart to nodes: audio, relayed byte for byte ------------------------------------------

WAV = b"RIFF" + bytes(2000)


def audio_file(disposition_tail: str = 'filename="a.wav"', extra: str = "") -> tuple[bytes, bytes]:
    head = f'Content-Disposition: form-data; name="file"; {disposition_tail}\r\nContent-Type: audio/wav'
    return (head + extra).encode(), WAV


HOSTILE_AUDIO = {
    "backslash-escaped quote": [field("model", "whisper-tiny"), audio_file('filename="a\\"; name=\\"model"')],
    "percent-encoded quote": [field("model", "whisper-tiny"), audio_file('filename="a%22; name=%22model"')],
    "percent-encoded CR/LF": [field("model", "whisper-tiny"), audio_file('filename="a%0d%0aX-Evil: 1"')],
    "raw LF in a header": [field("model", "whisper-tiny"), audio_file('filename="a\nname="model".wav"')],
    "second Content-Disposition": [
        field("model", "whisper-tiny"),
        audio_file(extra='\r\nContent-Disposition: form-data; name="model"'),
    ],
    "an extra part header": [field("model", "whisper-tiny"), audio_file(extra="\r\nX-Evil: 1")],
    "RFC 2231 name*": [field("model", "whisper-tiny"), audio_file("filename=\"a.wav\"; name*=UTF-8''model")],
    "folded header line": [field("model", "whisper-tiny"), audio_file(extra="\r\n  ; name=model")],
    "a field sent twice": [field("model", "whisper-tiny"), field("model", "tts-tiny"), audio_file()],
    "a field that is not UTF-8": [
        field("model", "whisper-tiny"),
        (b'Content-Disposition: form-data; name="prompt"', b"\xff"),
        audio_file(),
    ],
}


@pytest.mark.parametrize("case", list(HOSTILE_AUDIO))
def test_an_ambiguous_audio_upload_is_a_400_before_any_backend(system: FullSystem, case: str) -> None:
    body, content_type = multipart(HOSTILE_AUDIO[case])
    before = len(system.backend.state.uploads)
    response = system.post("/v1/audio/transcriptions", body, content_type)
    expect_error(response, 400)
    assert len(system.backend.state.uploads) == before


def test_a_hostile_boundary_is_a_400(system: FullSystem) -> None:
    body, _ = multipart([field("model", "whisper-tiny"), audio_file()])
    for boundary in ('"a\\"b"', "x" * 71, '"a b "'):
        content_type = f"multipart/form-data; boundary={boundary}"
        expect_error(system.post("/v1/audio/transcriptions", body, content_type), 400)


def test_a_plain_upload_with_a_unicode_file_name_still_works(system: FullSystem) -> None:
    parts = [field("model", "whisper-tiny"), audio_file('filename="spr\u00e4che 1.wav"')]
    body, content_type = multipart(parts)
    response = system.post("/v1/audio/transcriptions", body, content_type)
    assert response.status_code == 200, response.text
    assert system.backend.state.uploads[-1].file_name == "spr\u00e4che 1.wav"


# --- model defaults checked when given -------------------------------------------------------


@pytest.mark.parametrize(
    ("capabilities", "defaults", "param"),
    [
        (["image_generation"], {"steps": 0}, "defaults.steps"),
        (["image_generation"], {"steps": "many"}, "defaults.steps"),
        (["image_generation"], {"sampler": "magic"}, "defaults.sampler"),
        (["image_generation"], {"stepz": 4}, "defaults.stepz"),
        (["image_generation"], {"size": "300x300"}, "defaults.size"),
        (["image_generation"], {"output_format": "html"}, "defaults.output_format"),
        (["chat_completion"], {"temperature": 9}, "defaults.temperature"),
        (["chat_completion"], {"stream": True}, "defaults.stream"),
        (["embeddings"], {"encoding_format": "hex"}, "defaults.encoding_format"),
        (["text_to_speech"], {"speed": 10}, "defaults.speed"),
        (["text_to_speech"], {"volume": 3}, "defaults.volume"),
    ],
)
def test_bad_model_defaults_are_a_400_naming_the_key(
    system: FullSystem, capabilities: list[str], defaults: dict[str, object], param: str
) -> None:
    body = json.dumps({"id": "checked", "capabilities": capabilities, "defaults": defaults}).encode()
    expect_error(system.post("/v0/models", body, JSON, "admin"), 400, "invalid_model_defaults", param)


def test_good_model_defaults_are_stored(system: FullSystem) -> None:
    for capabilities, defaults in (
        (["image_generation"], {"steps": 1, "seed": 99, "size": "256x256", "output_format": "webp"}),
        (["chat_completion"], {"temperature": 0.2, "top_k": 5, "x_backend_extra": {"a": 1}}),
        (["text_to_speech"], {"voice": "alloy", "speed": 1.5}),
    ):
        body = json.dumps({"id": "checked-ok", "capabilities": capabilities, "defaults": defaults}).encode()
        response = system.post("/v0/models", body, JSON, "admin")
        assert response.status_code == 201, response.text
        assert response.json()["defaults"] == defaults


def test_defaults_stored_before_the_check_are_a_503_not_a_500(
    tmp_path: Path, procs: list[Proc], models_dir: Path
) -> None:
    """A row written by an older router (no check) gives its users a clean 503."""
    data_dir = tmp_path / "router-data"
    router = router_proc(tmp_path, data_dir=data_dir)
    procs.append(router)
    router.start().wait_healthy()
    router.stop()
    with sqlite3.connect(data_dir / "llmlb.sqlite3") as db:
        db.execute(
            "INSERT INTO models (id, capabilities, defaults, description, created_at) VALUES (?, ?, ?, ?, ?)",
            ("demo", '["image_generation"]', '{"steps": "many"}', "", 0.0),
        )
    router.start().wait_healthy()
    node = node_proc(tmp_path, router.url, models_dir, create_key(router.url, ["node"]), name="old-row")
    procs.append(node)
    node.start().wait_healthy(60).wait_online(router.url)
    response = httpx.post(
        f"{router.url}/v1/images/generations",
        json={"model": "demo", "prompt": "x"},
        headers={"authorization": f"Bearer {create_key(router.url, ['api'])}"},
        timeout=60,
    )
    expect_error(response, 503, "invalid_model_defaults")
