"""The Images API through a real router and node with the official openai SDK: generations,
edits (with and without mask), variations; b64_json and url; formats; seeds; n distinct.

Images use ``size="auto"`` (the synthetic model's native 64x64) and 1 step unless the size
itself is under test, to keep the suite fast; the work is still real stable-diffusion.cpp.
"""

from __future__ import annotations

import io
import time

import httpx
import openai
import pytest
from PIL import Image

from tests.support.images_util import alpha_mask, decode_b64, gradient, mean_abs_diff, png_bytes
from tests.support.models import ImageSystem

FAST = {"steps": 1}


def test_generate_n3_distinct_and_seeds_reproducible(image_system: ImageSystem) -> None:
    client = image_system.client()
    result = client.images.generate(
        model="demo",
        prompt="a lighthouse at dusk",
        n=3,
        response_format="b64_json",
        extra_body={**FAST, "seed": 1234},
    )
    images = [decode_b64(d.b64_json) for d in result.data]
    assert [im.size for im in images] == [(64, 64)] * 3
    pixels = [im.tobytes() for im in images]
    assert len(set(pixels)) == 3
    assert result.size == "64x64" and result.output_format == "png" and result.created > 0
    # Image i of a seeded request is the image of seed + i: a single request reproduces it.
    third = client.images.generate(
        model="demo",
        prompt="a lighthouse at dusk",
        n=1,
        response_format="b64_json",
        extra_body={**FAST, "seed": 1236},
    )
    assert decode_b64(third.data[0].b64_json).tobytes() == pixels[2]


def test_url_response_downloads_without_key_then_expires(image_system: ImageSystem, tmp_path) -> None:
    client = image_system.client()
    result = client.images.generate(model="demo", prompt="a red barn", response_format="url", extra_body=FAST)
    url = result.data[0].url
    assert url and url.startswith(f"{image_system.router.url}/v1/images/files/")
    token = url.rsplit("/", 1)[1].split(".")[0]
    assert len(token) >= 43  # 256 bits of randomness
    download = httpx.get(url)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "PNG" and image.size == (64, 64)
    guessed = httpx.get(url[:-10] + "AAAAAA.png")
    assert guessed.status_code == 404
    # The shared router keeps url images for 3 s (url_ttl_minutes = 0.05).
    time.sleep(3.5)
    expired = httpx.get(url)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "image_expired"


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_formats(image_system: ImageSystem, fmt: str, pil_format: str) -> None:
    result = image_system.client().images.generate(
        model="demo",
        prompt="a bowl of fruit",
        response_format="b64_json",
        output_format=fmt,  # type: ignore[arg-type]
        output_compression=50,
        extra_body={**FAST, "seed": 7},
    )
    image = decode_b64(result.data[0].b64_json)
    assert image.format == pil_format and image.size == (64, 64)
    assert result.output_format == fmt


def test_quality_and_style_are_accepted_and_reported(image_system: ImageSystem) -> None:
    result = image_system.client().images.generate(
        model="demo",
        prompt="a harbour",
        quality="hd",
        style="natural",
        response_format="b64_json",
        extra_body={"steps": 1},
    )
    assert result.quality == "hd"
    assert decode_b64(result.data[0].b64_json).size == (64, 64)


def test_edit_with_mask_regenerates_only_the_transparent_area(image_system: ImageSystem) -> None:
    init = gradient(64, 64)
    edit_box = (0, 0, 32, 64)  # left half transparent in the mask: edit here
    result = image_system.client().images.edit(
        model="demo",
        image=("init.png", png_bytes(init), "image/png"),
        mask=("mask.png", png_bytes(alpha_mask(64, 64, edit_box)), "image/png"),
        prompt="a bright red square",
        response_format="b64_json",
        extra_body={**FAST, "seed": 3},
    )
    out = decode_b64(result.data[0].b64_json)
    assert out.size == (64, 64)
    inside = mean_abs_diff(out, init, edit_box)
    outside = mean_abs_diff(out, init, (32, 0, 64, 64))
    assert outside == 0.0  # every pixel outside the mask is kept as it was
    assert inside > 10.0, inside  # the masked area was regenerated


def test_edit_without_mask_transforms_the_whole_image(image_system: ImageSystem) -> None:
    init = gradient(64, 64)
    result = image_system.client().images.edit(
        model="demo",
        image=("init.png", png_bytes(init), "image/png"),
        prompt="make it night",
        n=2,
        response_format="b64_json",
        extra_body={**FAST, "seed": 11},
    )
    outs = [decode_b64(d.b64_json) for d in result.data]
    assert all(o.size == (64, 64) for o in outs)
    assert outs[0].tobytes() != outs[1].tobytes()
    for out in outs:
        assert mean_abs_diff(out, init, (0, 0, 32, 64)) > 1.0
        assert mean_abs_diff(out, init, (32, 0, 64, 64)) > 1.0


def test_edit_with_several_images_for_a_model_without_references_is_a_400(image_system: ImageSystem) -> None:
    """Before issue 10 the extra images were silently dropped; SD1 takes no reference images."""
    first, second = gradient(64, 64), Image.new("RGB", (64, 64), (0, 200, 0))
    with pytest.raises(openai.BadRequestError) as refused:
        image_system.client().images.edit(
            model="demo",
            image=[
                ("a.png", png_bytes(first), "image/png"),
                ("b.jpg", png_bytes(second, "JPEG"), "image/jpeg"),
            ],
            prompt="combine",
            response_format="b64_json",
            extra_body={**FAST, "seed": 5, "strength": 0.3},
        )
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "too_many_images", "image")
    assert "no reference images" in error.message


def test_variations_n3_distinct(image_system: ImageSystem) -> None:
    init = gradient(64, 64)
    result = image_system.client().images.create_variation(
        model="demo",
        image=("init.png", png_bytes(init), "image/png"),
        n=3,
        response_format="b64_json",
        extra_body=FAST,
    )
    outs = [decode_b64(d.b64_json) for d in result.data]
    assert [o.size for o in outs] == [(64, 64)] * 3
    assert len({o.tobytes() for o in outs}) == 3


def test_edit_and_variation_as_url(image_system: ImageSystem) -> None:
    client = image_system.client()
    init = ("init.png", png_bytes(gradient(64, 64)), "image/png")
    calls = (
        lambda: client.images.edit(
            model="demo", image=init, prompt="x", response_format="url", extra_body=FAST
        ),
        lambda: client.images.create_variation(
            model="demo", image=init, response_format="url", extra_body=FAST
        ),
    )
    for call in calls:
        download = httpx.get(call().data[0].url or "")  # at once: the shared router's TTL is 3 s
        assert download.status_code == 200
        assert Image.open(io.BytesIO(download.content)).size == (64, 64)


def test_model_defaults_from_admin_apply(image_system: ImageSystem) -> None:
    from tests.support.servers import ADMIN_KEY

    created = httpx.post(
        f"{image_system.router.url}/v0/models",
        headers={"x-api-key": ADMIN_KEY},
        json={"id": "demo", "capabilities": ["image_generation"], "defaults": {"steps": 1, "seed": 99}},
    )
    assert created.status_code == 201
    try:
        client = image_system.client()
        a = client.images.generate(model="demo", prompt="defaults", response_format="b64_json")
        b = client.images.generate(
            model="demo", prompt="defaults", response_format="b64_json", extra_body={"seed": 99, "steps": 1}
        )
        assert decode_b64(a.data[0].b64_json).tobytes() == decode_b64(b.data[0].b64_json).tobytes()
    finally:
        httpx.delete(f"{image_system.router.url}/v0/models/demo", headers={"x-api-key": ADMIN_KEY})
