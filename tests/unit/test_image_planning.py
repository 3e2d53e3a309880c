"""Planning and checking an image job, as pure functions: how ``n`` images are split over nodes,
how large a node's answer may be, what a node's answer must look like to be passed on, and
which size a request gets.

A node's answer is untrusted input (a compromised or buggy node must not reach clients with
something that is not the images asked for), so :func:`read_answer` is tested on each way an
answer can be wrong; each is a :class:`BadAnswer`, which the forwarder turns into a 502 and a
retry on another node.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from llmlb_core.api import BadAnswer, OpenAIError
from llmlb_plugins.images.answers import answer_limit, read_answer
from llmlb_plugins.images.planning import Part, split
from llmlb_plugins.images.protocol import SIZE_AUTO, SIZES
from llmlb_plugins.images.validation import resolve_size
from tests.support.images_util import gradient, png_bytes

PNG, JPEG, WEBP = (png_bytes(gradient(8, 8), fmt) for fmt in ("PNG", "JPEG", "WEBP"))


# --- split: n images over the idle nodes ----------------------------------------------------
@pytest.mark.parametrize(
    ("n", "ways", "parts"),
    [
        (1, 1, [(0, 1)]),
        (5, 2, [(0, 3), (3, 2)]),
        (10, 3, [(0, 4), (4, 3), (7, 3)]),
        (10, 4, [(0, 3), (3, 3), (6, 2), (8, 2)]),
        (4, 4, [(0, 1), (1, 1), (2, 1), (3, 1)]),
        (3, 8, [(0, 1), (1, 1), (2, 1)]),  # more nodes than images: one image each
        (4, 0, [(0, 4)]),  # no idle node counted: one part (it queues)
        (4, -2, [(0, 4)]),
    ],
)
def test_split(n: int, ways: int, parts: list[tuple[int, int]]) -> None:
    assert split(n, ways) == [Part(offset, count) for offset, count in parts]


@pytest.mark.parametrize("n", range(1, 11))
@pytest.mark.parametrize("ways", range(-1, 13))
def test_split_is_contiguous_near_equal_and_complete(n: int, ways: int) -> None:
    parts = split(n, ways)
    assert len(parts) == max(1, min(n, ways))
    assert sum(p.count for p in parts) == n
    assert all(p.count >= 1 for p in parts)
    assert max(p.count for p in parts) - min(p.count for p in parts) <= 1
    assert [p.count for p in parts] == sorted((p.count for p in parts), reverse=True)  # larger first
    offsets = [p.offset for p in parts]
    assert offsets == [sum(p.count for p in parts[:i]) for i in range(len(parts))]  # image i: seed s+i


# --- answer_limit: how large a node's answer may be -----------------------------------------
PER_IMAGE_OVERHEAD = 256 * 1024
ANSWER_OVERHEAD = 64 * 1024


def test_answer_limit_counts_every_pixel_as_rgba_in_base64() -> None:
    assert answer_limit("512x512", 1) == 512 * 512 * 4 * 4 // 3 + PER_IMAGE_OVERHEAD + ANSWER_OVERHEAD
    assert answer_limit("1024x1536", 1) == 1024 * 1536 * 4 * 4 // 3 + PER_IMAGE_OVERHEAD + ANSWER_OVERHEAD


def test_answer_limit_grows_per_image_not_per_answer() -> None:
    one, three = answer_limit("256x256", 1), answer_limit("256x256", 3)
    assert three - one == 2 * (one - ANSWER_OVERHEAD)


def test_auto_counts_as_the_largest_supported_size() -> None:
    largest = max(answer_limit(size, 1) for size in SIZES)
    assert answer_limit(SIZE_AUTO, 1) == largest == answer_limit("1792x1024", 1)


def test_an_incompressible_image_fits_its_limit() -> None:
    """The worst PNG of a size (random RGBA, stored uncompressed) is still under the limit."""
    width, height = 256, 256
    png = len(PNG) + height * (1 + width * 4) + 1024  # rows with filter bytes, chunk/zlib framing
    encoded = len(base64.b64encode(b"\x00" * png))
    answer = {"created": 1, "data": [{"b64_json": "x" * encoded, "revised_prompt": "p" * 1000}]}
    assert len(json.dumps(answer)) < answer_limit("256x256", 1)


# --- read_answer: a node's answer, strictly -------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def answer(*images: bytes, **fields: Any) -> bytes:
    body: dict[str, Any] = {"created": 1700000000, "data": [{"b64_json": b64(i)} for i in images], **fields}
    return json.dumps(body).encode()


def test_a_good_answer_is_decoded() -> None:
    content = answer(PNG, PNG, size="512x512", quality="standard")
    read = read_answer(content, count=2)
    assert [image.b64_json for image in read.data] == [PNG, PNG]
    assert (read.created, read.size, read.quality, read.output_format) == (
        1700000000,
        "512x512",
        "standard",
        None,
    )


def test_seeds_and_revised_prompts_are_kept() -> None:
    body = {"created": 1, "data": [{"b64_json": b64(PNG), "seed": 7, "revised_prompt": "a cat"}]}
    image = read_answer(json.dumps(body).encode(), count=1).data[0]
    assert (image.seed, image.revised_prompt) == (7, "a cat")


@pytest.mark.parametrize(("images", "count"), [((PNG,), 2), ((PNG, PNG, PNG), 2), ((), 1)])
def test_exactly_the_images_asked_for(images: tuple[bytes, ...], count: int) -> None:
    with pytest.raises(BadAnswer) as bad:
        read_answer(answer(*images), count=count)
    assert str(bad.value) == f"{len(images)} image(s) where {count} were asked for"


@pytest.mark.parametrize(
    ("output_format", "image"),
    [(None, PNG), ("png", PNG), ("jpeg", JPEG), ("webp", WEBP)],
)
def test_an_image_of_the_output_format_is_taken(output_format: str | None, image: bytes) -> None:
    fields = {} if output_format is None else {"output_format": output_format}
    assert read_answer(answer(image, **fields), count=1).data[0].b64_json == image


@pytest.mark.parametrize(
    ("output_format", "image"),
    [
        (None, JPEG),  # png by default
        ("png", WEBP),
        ("jpeg", PNG),
        ("webp", b"RIF"),
        ("webp", b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x00" * 16),  # a WAV file is RIFF too
        ("png", b"<svg onload=alert(1)>"),
        ("png", b""),
    ],
)
def test_an_image_that_is_not_its_format_is_refused(output_format: str | None, image: bytes) -> None:
    fields = {} if output_format is None else {"output_format": output_format}
    with pytest.raises(BadAnswer) as bad:
        read_answer(answer(image, **fields), count=1)
    assert str(bad.value).startswith(f"an image that is not one {output_format or 'png'!r} file: ")


@pytest.mark.parametrize(
    "b64_json",
    [
        b64(PNG)[:-2],  # bad length
        b64(PNG).replace("A", "-", 1),  # a character outside the alphabet
        "iVBORw0KGgo" + "\n" + "AAAA",  # whitespace
        base64.urlsafe_b64encode(b"\xff\xfe" * 20).decode(),  # url-safe alphabet
    ],
)
def test_base64_is_strict(b64_json: str) -> None:
    content = json.dumps({"created": 1, "data": [{"b64_json": b64_json}]}).encode()
    with pytest.raises(BadAnswer) as bad:
        read_answer(content, count=1)
    assert str(bad.value).startswith("not an images response: ")


@pytest.mark.parametrize(
    "body",
    [
        {"created": 1, "data": [{"b64_json": b64(PNG)}], "debug": "x"},  # unknown top-level field
        {"created": 1, "data": [{"b64_json": b64(PNG), "path": "/tmp/x.png"}]},  # unknown image field
        {"data": [{"b64_json": b64(PNG)}]},  # created missing
        {"created": "1", "data": [{"b64_json": b64(PNG)}]},  # wrong type
        {"created": 1, "data": [{"b64_json": b64(PNG), "seed": -1}]},
        {"created": 1, "data": [{"b64_json": b64(PNG)}], "size": "512x512\n"},
        {"created": 1, "data": [{"b64_json": b64(PNG)}], "output_format": "gif"},
        {"created": 1, "data": [{"b64_json": b64(PNG)}], "quality": "ultra"},
    ],
)
def test_anything_but_the_images_schema_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(BadAnswer) as bad:
        read_answer(json.dumps(body).encode(), count=1)
    assert str(bad.value).startswith("not an images response: ")


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"created":1,"data":[' * 200, b"\xff\xfe"])
def test_unreadable_answers_are_refused(content: bytes) -> None:
    with pytest.raises(BadAnswer):
        read_answer(content, count=1)


@pytest.mark.parametrize(
    "image",
    [{"url": "http://evil/x.png"}, {"b64_json": b64(PNG), "url": "http://evil/x.png"}, {"seed": 1}],
)
def test_an_image_without_b64_json_is_refused(image: dict[str, Any]) -> None:
    with pytest.raises(BadAnswer) as bad:
        read_answer(json.dumps({"created": 1, "data": [image]}).encode(), count=1)
    assert str(bad.value) == "an image without b64_json"


# --- resolve_size ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fallback", [True, False])
def test_supported_sizes_are_used_as_they_are(size: str, fallback: bool) -> None:
    assert resolve_size(size, fallback=fallback) == (size, None)


@pytest.mark.parametrize("size", [None, "auto"])
def test_auto_and_none_are_the_models_own_size(size: str | None) -> None:
    assert resolve_size(size, fallback=False) == (SIZE_AUTO, None)


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        ("1000x1000", "1024x1024"),
        ("500x500", "512x512"),
        ("64x64", "256x256"),
        ("4096x4096", "1024x1024"),  # square stays square: aspect ratio first
        ("1920x1080", "1792x1024"),
        ("1080x1920", "1024x1792"),
        ("1500x1000", "1536x1024"),
        (" 1000 X 1000 ", "1024x1024"),
    ],
)
def test_fallback_picks_the_nearest_size_and_reports_the_replaced_one(asked: str, used: str) -> None:
    assert resolve_size(asked, fallback=True) == (used, asked)


@pytest.mark.parametrize(
    ("size", "fallback"),
    [
        ("1000x1000", False),  # well-formed but unsupported, and no fallback
        ("big", True),
        ("", True),
        ("0x512", True),
        ("512x0", True),
        ("-512x512", True),
        ("512x512x512", True),
        ("100000x1", True),  # more than 5 digits
        ("512*512", True),
        ("512x512\n1", True),
    ],
)
def test_invalid_sizes_are_a_400_naming_size(size: str, fallback: bool) -> None:
    with pytest.raises(OpenAIError) as bad:
        resolve_size(size, fallback=fallback)
    assert (bad.value.status, bad.value.param, bad.value.code) == (400, "size", "invalid_size")
    assert bad.value.message == (
        f"Invalid size '{size}'. Supported sizes: "
        "256x256, 512x512, 1024x1024, 1792x1024, 1024x1792, 1536x1024, 1024x1536, auto"
    )
