"""Audio API through the router to an OpenAI-compatible endpoint, with the official SDK.

No real speech-to-text or text-to-speech server can run here: every OpenAI-compatible one on
PyPI (faster-whisper and whisper.cpp bindings, piper, kokoro servers, ...) downloads its model
weights at run time, and this machine cannot fetch them. So the upstream is the loopback test
server of ``tests/text_backends.py``: real uvicorn HTTP, a real multipart parser reading the
upload as it streams in, a real chunked binary stream for speech.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.text_backends import expected_speech
from tests.support.text_fixtures import AUDIO_MODELS, TextSystem, text_system

MB = 1024 * 1024
FAILING = ["fail-400", "fail-500"]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextSystem]:
    both = ["speech_to_text", "text_to_speech"]
    with text_system(
        tmp_path_factory.mktemp("audio-api"),
        AUDIO_MODELS + FAILING,
        endpoint={"model_capabilities": {model: both for model in FAILING}},
    ) as system:
        yield system


@pytest.fixture(scope="module")
def wav() -> bytes:
    return b"RIFF" + os.urandom(200_000)


def _multipart(fields: list[tuple[str, str]], file: bytes, *, file_first: bool = False) -> tuple[bytes, str]:
    boundary = "llmlbtestboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    ]
    file_part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + file
        + b"\r\n"
    )
    parts = [file_part, *parts] if file_first else [*parts, file_part]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_audio_models_are_listed_with_their_flags(system: TextSystem) -> None:
    models = {m.id: m.model_extra["capabilities"] for m in system.client().models.list()}  # type: ignore[index]
    assert models["whisper-tiny"] == ["speech_to_text"]
    assert models["tts-tiny"] == ["text_to_speech"]


def test_transcription_with_the_sdk_relays_the_exact_upload(system: TextSystem, wav: bytes) -> None:
    client = system.client()
    result = client.audio.transcriptions.create(
        model="whisper-tiny", file=("speech.wav", wav, "audio/wav"), language="en", temperature=0.2
    )
    assert result.text == f"up heard {len(wav)} bytes"
    upload = system.backend.state.uploads[-1]
    assert upload.file_sha256 == hashlib.sha256(wav).hexdigest()
    assert upload.file_name == "speech.wav"
    assert upload.fields["language"] == "en" and upload.fields["model"] == "whisper-tiny"
    assert system.backend.state.requests[-1]["authorization"] == "Bearer sk-upstream-secret-7f3c9a1e5b"


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_transcription_response_formats(system: TextSystem, wav: bytes, fmt: str) -> None:
    result = system.client().audio.transcriptions.create(
        model="whisper-tiny",
        file=("a.wav", wav),
        response_format=fmt,  # type: ignore[arg-type]
    )
    text = result if isinstance(result, str) else result.text
    assert f"heard {len(wav)} bytes" in text
    if fmt == "vtt":
        assert isinstance(result, str) and result.startswith("WEBVTT")
    if fmt == "verbose_json":
        assert result.language == "en"  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_translation_with_the_sdk(system: TextSystem, wav: bytes) -> None:
    result = system.client().audio.translations.create(model="whisper-tiny", file=("a.wav", wav))
    assert result.text == f"up heard {len(wav)} bytes"
    assert system.backend.state.requests[-1]["path"] == "/v1/audio/translations"


def test_speech_is_streamed_to_the_client_as_it_is_produced(system: TextSystem) -> None:
    state = system.backend.state
    state.chunk_times.clear()
    arrivals: list[tuple[float, int]] = []
    received = b""
    with system.client().audio.speech.with_streaming_response.create(
        model="tts-tiny",
        voice="alloy",
        input="hello world",
        response_format="wav",
        extra_body={"x_delay": 0.2, "x_chunks": 5},
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        for chunk in response.iter_bytes(4096):
            received += chunk
            arrivals.append((time.monotonic(), len(received)))
    assert received == expected_speech("hello world", 5)
    produced = list(state.chunk_times)
    # The first 4 KiB chunk reached the client before the upstream produced the second one.
    first_full = next(t for t, size in arrivals if size >= 4096)
    assert first_full < produced[1], (arrivals, produced)


def test_speech_formats_and_speed(system: TextSystem) -> None:
    client = system.client()
    for fmt, media_type in (("mp3", "audio/mpeg"), ("flac", "audio/flac"), ("pcm", "audio/pcm")):
        response = client.audio.speech.create(
            model="tts-tiny",
            voice="nova",
            input="abc",
            response_format=fmt,
            speed=1.5,  # type: ignore[arg-type]
        )
        assert response.content == expected_speech("abc")
        assert response.response.headers["content-type"] == media_type
    assert system.backend.state.requests[-1]["body"]["speed"] == 1.5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tts-tiny", "voice": "alloy", "input": "x" * 4097}, "input"),
        ({"model": "tts-tiny", "voice": "alloy", "input": "  "}, "input"),
        ({"model": "tts-tiny", "input": "hi"}, "voice"),
        ({"model": "tts-tiny", "voice": "alloy", "input": "hi", "response_format": "ogg"}, "response_format"),
        ({"model": "tts-tiny", "voice": "alloy", "input": "hi", "speed": 5}, "speed"),
        ({"voice": "alloy", "input": "hi"}, "model"),
    ],
)
def test_speech_validation(system: TextSystem, body: dict[str, object], param: str) -> None:
    response = httpx.post(f"{system.url}/v1/audio/speech", json=body, headers=system.headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_speech_input_of_4096_characters_is_accepted(system: TextSystem) -> None:
    text = "é" * 4096  # characters, not bytes
    response = system.client().audio.speech.create(model="tts-tiny", voice="alloy", input=text)
    assert response.content == expected_speech(text)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ([("model", "whisper-tiny"), ("response_format", "mp3")], "response_format"),
        ([("model", "whisper-tiny"), ("temperature", "hot")], "temperature"),
        ([("model", "whisper-tiny"), ("temperature", "1.5")], "temperature"),
        ([("language", "en")], "model"),
    ],
)
def test_transcription_field_validation(
    system: TextSystem, wav: bytes, fields: list[tuple[str, str]], param: str
) -> None:
    before = len(system.backend.state.uploads)
    body, content_type = _multipart(fields, wav)
    response = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=body,
        headers={**system.headers(), "content-type": content_type},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert len(system.backend.state.uploads) == before  # refused before any backend saw it


def test_transcription_without_a_file_or_not_multipart(system: TextSystem) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"whisper-tiny\r\n--{boundary}--\r\n"
    )
    response = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=body.encode(),
        headers={**system.headers(), "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    as_json = httpx.post(
        f"{system.url}/v1/audio/transcriptions", json={"model": "whisper-tiny"}, headers=system.headers()
    )
    assert as_json.status_code == 400 and as_json.json()["error"]["code"] == "invalid_content_type"


def test_model_sent_after_the_file_still_works(system: TextSystem, wav: bytes) -> None:
    body, content_type = _multipart([("model", "whisper-tiny")], wav, file_first=True)
    response = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=body,
        headers={**system.headers(), "content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert system.backend.state.uploads[-1].file_sha256 == hashlib.sha256(wav).hexdigest()


def test_backend_errors_come_back_openai_shaped(system: TextSystem, wav: bytes) -> None:
    client = system.client()
    before = system.backend.state.count("/v1/audio/transcriptions", "fail-400")
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="fail-400", file=("a.wav", wav))
    assert refused.value.code == "bad_thing"
    assert system.backend.state.count("/v1/audio/transcriptions", "fail-400") == before + 1
    with pytest.raises(openai.InternalServerError) as broken:
        client.audio.speech.create(model="fail-500", voice="alloy", input="hi")
    # A 5xx body is logged, not shown (issue 8): the message quotes the request id instead.
    assert broken.value.status_code == 500 and "fail-500 always breaks" not in broken.value.message
    assert "request id: req_" in broken.value.message


async def test_upload_is_streamed_through_not_buffered(system: TextSystem) -> None:
    """The backend receives the start of the file while the client is still sending the rest."""
    state = system.backend.state
    head, content_type = _multipart([("model", "whisper-tiny")], b"")
    prefix, suffix = head[: head.rindex(b"\r\n--")], head[head.rindex(b"\r\n--") :]
    piece = os.urandom(256 * 1024)
    seen_before = state.body_bytes_seen
    backend_saw_data_mid_upload = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal backend_saw_data_mid_upload
        yield prefix + piece
        for _ in range(40):  # wait (up to 4 s) for the backend to get the first piece
            if state.body_bytes_seen - seen_before >= len(piece):
                backend_saw_data_mid_upload = True
                break
            await asyncio.sleep(0.1)
        yield piece + suffix

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{system.url}/v1/audio/transcriptions",
            content=body(),
            headers={**system.headers(), "content-type": content_type},
        )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == f"up heard {2 * len(piece)} bytes"
    assert backend_saw_data_mid_upload
    upload = state.uploads[-1]
    assert upload.file_sha256 == hashlib.sha256(piece + piece).hexdigest()
    assert upload.chunked  # the client sent no length: neither did the router


def test_upload_over_25_mb_is_refused_and_never_completes_upstream(system: TextSystem) -> None:
    before = len(system.backend.state.uploads)
    big = b"\0" * (25 * MB + 1)
    body, content_type = _multipart([("model", "whisper-tiny")], big)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while relaying
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    response = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=chunks(),
        headers={**system.headers(), "content-type": content_type},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "file_too_large"
    assert len(system.backend.state.uploads) == before
    declared = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=body,
        headers={**system.headers(), "content-type": content_type},
        timeout=60,
    )
    assert declared.status_code == 413


def test_upload_of_exactly_25_mb_is_accepted(system: TextSystem, tmp_path: Path) -> None:
    audio = tmp_path / "long.wav"
    audio.write_bytes(b"\1" * (25 * MB))
    with audio.open("rb") as fh:
        result = system.client(timeout=60).audio.transcriptions.create(model="whisper-tiny", file=fh)
    assert result.text == f"up heard {25 * MB} bytes"


def test_speech_that_breaks_mid_stream_is_truncated_not_clean(system: TextSystem) -> None:
    received = bytearray()
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST",
            f"{system.url}/v1/audio/speech",
            json={"model": "tts-tiny", "voice": "alloy", "input": "cut", "x_chunks": 6, "x_break_after": 3},
            headers=system.headers(),
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += chunk
    assert bytes(received) == expected_speech("cut", 3)  # the chunks before the break, then an error


def test_an_invalid_field_after_the_file_is_refused_when_the_body_ends(
    system: TextSystem, wav: bytes
) -> None:
    before = len(system.backend.state.uploads)
    body, content_type = _multipart(
        [("model", "whisper-tiny"), ("response_format", "mp3")], wav, file_first=True
    )
    response = httpx.post(
        f"{system.url}/v1/audio/transcriptions",
        content=body,
        headers={**system.headers(), "content-type": content_type},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format"
    assert len(system.backend.state.uploads) == before


async def test_an_invalid_field_after_a_relayed_file_aborts_the_upload(system: TextSystem) -> None:
    """The relay has started when the bad field arrives: the upload is aborted, the client gets
    the 400, and the backend never gets a complete request."""
    boundary = "abortboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="temperature"\r\n\r\n'
        f"hot\r\n--{boundary}--\r\n"
    ).encode()
    state = system.backend.state
    before, seen_before = len(state.uploads), state.body_bytes_seen

    async def body() -> AsyncIterator[bytes]:
        yield head + b"x" * 100_000
        for _ in range(40):  # the relay to the backend is under way
            if state.body_bytes_seen > seen_before:
                break
            await asyncio.sleep(0.05)
        yield tail

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{system.url}/v1/audio/transcriptions",
            content=body(),
            headers={**system.headers(), "content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert state.body_bytes_seen > seen_before  # the backend was receiving the upload
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "temperature"
    assert len(state.uploads) == before  # ... but never got all of it
