"""Property-based fuzzing of the router's JSON and multipart routes (issue 8), with hypothesis.

A real router process, a real StableDiffusion node process and a loopback OpenAI-compatible
backend (``tests.support.hostile_util.full_system``) take raw bytes, not only valid JSON: random bytes,
random JSON, plausible requests with random values, plausible requests with garbage spliced in,
deep nesting; and multipart bodies whose part names, file names, content types, boundaries and
data are random (quotes, CR/LF, non-UTF-8 included) next to plausible ones carrying real PNGs
and WAVs. Every answer must be below 500, and every error OpenAI-shaped; the router must still
serve afterwards.

The plausible image uploads that pass the router's checks go to a FAKE images node
(``tests.support.fake_node``, model ``fake-img``, answering as many images as asked at once): an edit on
the real node takes seconds on a busy CPU, which ~100 of them cannot afford here. The real node
gets the JSON fuzz of ``/v1/images/generations`` (and ``tests/test_hostile_input.py`` sends it
hostile edits).

Bounded to stay inside ``make test``: ``MAX_EXAMPLES`` per route, derandomized (the same
examples on every run), no deadline, no example database. ``LLMLB_FUZZ_EXAMPLES`` raises it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fake_node import FakeNode, images_as_asked
from tests.support.hostile_util import JSON_ROUTES, FullSystem, full_system, multipart, openai_error_problem
from tests.support.images_util import alpha_mask, gradient, png_bytes

MAX_EXAMPLES = int(os.environ.get("LLMLB_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
MULTIPART_ROUTES = ["/v1/images/edits", "/v1/images/variations", "/v1/audio/transcriptions"]

# What every example answered, per route: the figures the last test checks and prints.
STATUSES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[FullSystem]:
    with full_system(tmp_path_factory.mktemp("fuzz"), models_dir) as system:
        yield system


@pytest.fixture(scope="module")
def fake_images(system: FullSystem) -> Iterator[FakeNode]:
    advert = {"id": "fake-img", "capabilities": ["image_generation"], "runtime": "stable_diffusion"}
    node = FakeNode(system.url, system.node_key, "fake-images-1", [advert]).start()
    node.answers.update({"/v1/images/edits": images_as_asked, "/v1/images/variations": images_as_asked})
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120) as client:
        yield client


# --- strategies --------------------------------------------------------------------------------

text = st.text(max_size=24)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=24,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value, or anything JSON can hold."""
    return st.one_of(strategy, json_values)


CHAT_TEMPLATE = st.fixed_dictionaries(
    {
        "model": maybe(st.sampled_from(["tiny-chat", "nope", ""])),
        "messages": maybe(
            st.lists(
                st.fixed_dictionaries({"role": maybe(st.just("user")), "content": maybe(text)}), max_size=3
            )
        ),
    },
    optional={"stream": maybe(st.booleans()), "n": maybe(st.integers(-1, 3)), "x_chunks": st.integers(0, 3)},
)
TEMPLATES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/chat/completions": CHAT_TEMPLATE,
    "/v1/completions": st.fixed_dictionaries(
        {"model": maybe(st.sampled_from(["tiny-chat", "nope"])), "prompt": maybe(text)},
        optional={"stream": maybe(st.booleans())},
    ),
    "/v1/embeddings": st.fixed_dictionaries(
        {"model": maybe(st.sampled_from(["tiny-embed", "nope"])), "input": maybe(text)},
        optional={"encoding_format": maybe(st.sampled_from(["float", "base64"]))},
    ),
    "/v1/audio/speech": st.fixed_dictionaries(
        {
            "model": maybe(st.sampled_from(["tts-tiny", "nope"])),
            "input": maybe(text),
            "voice": maybe(st.sampled_from(["alloy", ""])),
        },
        optional={"speed": maybe(st.floats(0, 5)), "response_format": maybe(st.sampled_from(["wav", "mp3"]))},
    ),
    "/v1/images/generations": st.fixed_dictionaries(
        {"model": maybe(st.sampled_from(["demo", "nope", ""])), "prompt": maybe(text)},
        optional={
            "n": maybe(st.integers(-1, 2)),
            "size": maybe(st.sampled_from(["auto", "256x256", "64x64", "1x1"])),
            "response_format": maybe(st.sampled_from(["url", "b64_json"])),
            "steps": maybe(st.integers(0, 2)),
            "output_format": maybe(st.sampled_from(["png", "webp", "gif"])),
            "seed": maybe(st.integers(-1, 2**31)),
        },
    ),
}


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def splice(parts: tuple[bytes, bytes, int]) -> bytes:
    body, garbage, at = parts
    at %= len(body) + 1
    return body[:at] + garbage + body[at:]


def json_bodies(path: str) -> st.SearchStrategy[bytes]:
    shapes = [
        st.binary(max_size=512),
        json_values.map(encode),
        st.builds(
            lambda depth, open_: open_ * depth, st.integers(1, 3000), st.sampled_from([b"[", b'{"a":'])
        ),
    ]
    if path in TEMPLATES:  # admin and node routes get no plausible bodies: they would change state
        plausible = TEMPLATES[path].map(encode)
        shapes += [
            plausible,
            st.tuples(plausible, st.binary(min_size=1, max_size=4), st.integers(0, 10**6)).map(splice),
        ]
    return st.one_of(*shapes)


PNG = png_bytes(gradient(64, 64))
MASK = png_bytes(alpha_mask(64, 64, (0, 0, 16, 16)))
WAV = b"RIFF" + bytes(512)
header_text = st.text(max_size=16) | st.sampled_from(['a"; name="mask', "a\r\nContent-Type: x", "a\\", "%22"])
part_names = st.sampled_from(["model", "prompt", "image", "image[]", "mask", "file", "n", "size", "steps"])


@st.composite
def parts(draw: st.DrawFn) -> tuple[bytes, bytes]:
    name = draw(part_names | header_text)
    head = f'Content-Disposition: form-data; name="{name}"'
    filename = draw(st.none() | header_text | st.sampled_from(["a.png", "a.wav"]))
    if filename is not None:
        head += f'; filename="{filename}"'
    content_type = draw(st.none() | header_text | st.sampled_from(["image/png", "audio/wav"]))
    if content_type is not None:
        head += f"\r\nContent-Type: {content_type}"
    if filename is not None:
        data = draw(st.sampled_from([PNG, MASK, WAV]) | st.binary(max_size=256))
    else:
        data = draw(
            st.sampled_from([b"demo", b"whisper-tiny", b"a cat", b"1", b"2", b"auto"])
            | st.binary(max_size=32)
        )
    return head.encode(), data


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["plausible", "random parts", "raw"]))
    if kind == "raw":
        # Any printable ASCII: a control byte in a request header is refused by the HTTP server
        # itself (uvicorn's plain-text 400), before the router sees the request.
        boundary = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12))
        return draw(st.binary(max_size=512)), f"multipart/form-data; boundary={boundary}"
    chosen = draw(st.lists(parts(), max_size=6))
    if kind == "plausible":
        model = draw(st.sampled_from(["fake-img", "whisper-tiny", "nope"]))
        fixed = [
            (b'Content-Disposition: form-data; name="model"', model.encode()),
            (b'Content-Disposition: form-data; name="prompt"', b"fuzz"),
        ]
        upload = (
            b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png',
            PNG,
        )
        if model == "whisper-tiny":
            upload = (b'Content-Disposition: form-data; name="file"; filename="a.wav"', WAV)
        chosen = [*fixed, upload, *chosen[:2]]
    return multipart(chosen)


# --- the properties ----------------------------------------------------------------------------


def check(path: str, response: httpx.Response) -> None:
    STATUSES[(path, response.status_code)] += 1
    assert response.status_code < 500, f"{path}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        problem = openai_error_problem(response)
        assert problem is None, f"{path}: {response.status_code} not OpenAI-shaped: {problem}"


@pytest.mark.parametrize(("path", "scope"), JSON_ROUTES)
def test_json_routes_never_fail_on_raw_bytes(
    system: FullSystem, client: httpx.Client, path: str, scope: str
) -> None:
    @FUZZ
    @given(body=json_bodies(path))
    def property_(body: bytes) -> None:
        response = client.post(
            f"{system.url}{path}",
            content=body,
            headers={**system.auth(scope), "content-type": "application/json"},
        )
        check(path, response)

    property_()


@pytest.mark.parametrize("path", MULTIPART_ROUTES)
def test_multipart_routes_never_fail_on_raw_bytes(
    system: FullSystem, fake_images: FakeNode, client: httpx.Client, path: str
) -> None:
    @FUZZ
    @given(body=multipart_bodies())
    def property_(body: tuple[bytes, str]) -> None:
        content, content_type = body
        response = client.post(
            f"{system.url}{path}",
            content=content,
            headers={**system.auth("api"), "content-type": content_type},
        )
        check(path, response)

    property_()


def test_the_router_still_serves_after_the_fuzz(system: FullSystem, client: httpx.Client) -> None:
    answered = sum(STATUSES.values())
    server_errors = sum(n for (_, status), n in STATUSES.items() if status >= 500)
    by_status = sorted(Counter(status for _, status in STATUSES.elements()).items())
    print(f"\nfuzz: {answered} requests, {server_errors} answered 5xx; by status: {by_status}")
    assert server_errors == 0
    assert client.get(f"{system.url}/health").json()["status"] == "ok"
    chat = client.post(
        f"{system.url}/v1/chat/completions",
        json={"model": "tiny-chat", "messages": [{"role": "user", "content": "still here?"}]},
        headers=system.auth("api"),
    )
    assert chat.status_code == 200, chat.text
    image = client.post(
        f"{system.url}/v1/images/generations",
        json={"model": "demo", "prompt": "still here", "steps": 1, "response_format": "b64_json"},
        headers=system.auth("api"),
    )
    assert image.status_code == 200, image.text
