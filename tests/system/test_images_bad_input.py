"""Every bad input gets a clear OpenAI-shaped 4xx (or the documented 5xx), never a 500 or a
hang, and the system keeps serving afterwards. Real router + node processes, real multipart."""

from __future__ import annotations

import zlib
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.support.images_util import alpha_mask, decode_b64, gradient, png_bytes
from tests.support.models import ImageSystem
from tests.support.servers import ADMIN_KEY

MB = 1024 * 1024


def post_json(system: ImageSystem, body: Any, path: str = "/v1/images/generations") -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(
        f"{system.router.url}{path}",
        content=content,
        timeout=60,
        headers={"authorization": f"Bearer {system.api_key}", "content-type": "application/json"},
    )


def post_form(
    system: ImageSystem, path: str, data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
) -> httpx.Response:
    return httpx.post(
        f"{system.router.url}{path}",
        data=data,
        files=files,
        timeout=60,
        headers={"authorization": f"Bearer {system.api_key}"},
    )


def expect(
    response: httpx.Response,
    status: int,
    param: str | None = None,
    code: str | None = None,
    says: str | None = None,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if says is not None:
        assert says in error["message"], error
    return error


OK_BODY = {"model": "demo", "prompt": "a cat", "steps": 1}


@pytest.mark.parametrize(
    ("patch", "param", "says"),
    [
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"prompt": None}, "prompt", None),
        ({"n": 0}, "n", ">= 1"),
        ({"n": 11}, "n", "<= 10"),
        ({"n": "2"}, "n", "int"),
        ({"n": 2.5}, "n", "int"),
        ({"size": "300x300"}, "size", "256x256, 512x512, 1024x1024"),
        ({"size": "big"}, "size", "Supported sizes"),
        ({"quality": "ultra"}, "quality", "ultra"),
        ({"style": "bold"}, "style", "bold"),
        ({"response_format": "jpeg"}, "response_format", "jpeg"),
        ({"output_format": "gif"}, "output_format", "gif"),
        ({"output_compression": 101}, "output_compression", "<= 100"),
        ({"steps": 0}, "steps", ">= 1"),
        ({"steps": 1000}, "steps", "<= 150"),
        ({"cfg_scale": -1}, "cfg_scale", ">= 0"),
        ({"sampler": "magic"}, "sampler", "magic"),
        ({"strength": 1.5}, "strength", "<= 1"),
        ({"seed": -5}, "seed", ">= 0"),
        ({"negative_prompt": 5}, "negative_prompt", "str"),
        ({"stream": "yes"}, "stream", "bool"),
        ({"partial_images": 4}, "partial_images", "<= 3"),
        ({"stream": True, "response_format": "url"}, "response_format", "cannot be streamed"),
    ],
)
def test_bad_generation_fields(
    image_system: ImageSystem, patch: dict[str, Any], param: str, says: str | None
) -> None:
    body = {**OK_BODY, **patch}
    if patch.get("prompt", "") is None:
        body.pop("prompt")
    expect(post_json(image_system, body), 400, param=param, says=says)


def test_malformed_and_oversized_json(image_system: ImageSystem) -> None:
    expect(post_json(image_system, b"{not json"), 400, code="invalid_json")
    expect(post_json(image_system, b""), 400)
    expect(post_json(image_system, b"[1, 2]"), 400)
    huge = b'{"prompt": "' + b"a" * (20 * MB) + b'"}'
    expect(post_json(image_system, huge), 413)


def test_unknown_model_404_and_no_online_node_503(image_system: ImageSystem) -> None:
    expect(
        post_json(image_system, {**OK_BODY, "model": "nope"}),
        404,
        param="model",
        code="model_not_found",
        says="The model 'nope' does not exist",
    )
    created = httpx.post(
        f"{image_system.router.url}/v0/models",
        headers={"x-api-key": ADMIN_KEY},
        json={"id": "ghost", "capabilities": ["image_generation"]},
    )
    assert created.status_code == 201
    try:
        expect(post_json(image_system, {**OK_BODY, "model": "ghost"}), 503, code="no_capable_nodes")
    finally:
        httpx.delete(f"{image_system.router.url}/v0/models/ghost", headers={"x-api-key": ADMIN_KEY})


def test_sdk_raises_typed_errors(image_system: ImageSystem) -> None:
    client = image_system.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="demo", prompt="", extra_body={"steps": 1})
    assert bad.value.body["param"] == "prompt"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="missing", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{image_system.router.url}/v1", api_key="wrong", max_retries=0
        ).images.generate(model="demo", prompt="x")


def _edit(
    system: ImageSystem,
    image: tuple[str, bytes, str] | None = None,
    mask: tuple[str, bytes, str] | None = None,
    data: dict[str, str] | None = None,
    path: str = "/v1/images/edits",
) -> httpx.Response:
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    if image is not None:
        files.append(("image", image))
    if mask is not None:
        files.append(("mask", mask))
    fields = {"model": "demo", "prompt": "edit", "steps": "1", **(data or {})}
    if path.endswith("variations"):
        fields.pop("prompt")
    return post_form(system, path, fields, files)


GOOD = ("a.png", png_bytes(gradient(64, 64)), "image/png")


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
def test_bad_uploads(image_system: ImageSystem, path: str) -> None:
    gif = png_bytes(gradient(64, 64), "GIF")
    expect(
        _edit(image_system, ("a.gif", gif, "image/gif"), path=path),
        400,
        param="image",
        code="unsupported_image_format",
        says="png, jpeg, webp",
    )
    expect(
        _edit(image_system, ("a.txt", b"hello, not an image", "text/plain"), path=path),
        400,
        param="image",
        says="png, jpeg, webp",
    )
    # Over 4 MB: random bytes after a PNG signature (refused while streaming, by size):
    # 413, the one answer to a file over its limit (issue 9; it was a 400).
    big = b"\x89PNG\r\n\x1a\n" + bytes(4 * MB)
    expect(
        _edit(image_system, ("big.png", big, "image/png"), path=path),
        413,
        param="image",
        code="file_too_large",
        says="Image file exceeds maximum size of 4MB",
    )
    truncated = GOOD[1][: len(GOOD[1]) // 2]
    expect(
        _edit(image_system, ("t.png", truncated, "image/png"), path=path),
        400,
        param="image",
        code="invalid_image",
    )
    # A multipart body whose only file part is not named image / image[].
    expect(
        post_form(image_system, path, {"model": "demo", "prompt": "x"}, [("picture", GOOD)]),
        400,
        param="image",
        code="missing_image",
    )
    expect(_edit(image_system, GOOD, data={"n": "two"}, path=path), 400, param="n")
    expect(_edit(image_system, GOOD, data={"n": "11"}, path=path), 400, param="n")
    expect(_edit(image_system, GOOD, data={"size": "10x10"}, path=path), 400, param="size")
    expect(
        _edit(image_system, GOOD, data={"response_format": "gif"}, path=path), 400, param="response_format"
    )


def decompression_bomb() -> bytes:
    """A valid PNG of 30000 x 30000 black pixels that is only a few hundred KB on disk."""
    width = height = 30_000
    row = b"\x00" + bytes(width)  # filter byte + one greyscale byte per pixel
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused(image_system: ImageSystem) -> None:
    bomb = decompression_bomb()
    assert len(bomb) < 4 * MB
    expect(_edit(image_system, ("bomb.png", bomb, "image/png")), 400, param="image", code="image_too_large")


def test_bad_masks(image_system: ImageSystem) -> None:
    wrong_size = png_bytes(alpha_mask(32, 32, (0, 0, 16, 16)))
    expect(
        _edit(image_system, GOOD, ("m.png", wrong_size, "image/png")),
        400,
        param="mask",
        code="mask_size_mismatch",
    )
    no_alpha = png_bytes(Image.new("RGB", (64, 64), (255, 255, 255)))
    expect(
        _edit(image_system, GOOD, ("m.png", no_alpha, "image/png")),
        400,
        param="mask",
        code="mask_without_alpha",
    )
    expect(_edit(image_system, GOOD, ("m.png", b"garbage", "image/png")), 400, param="mask")


def test_body_far_over_limit_is_413(image_system: ImageSystem) -> None:
    response = post_form(
        image_system,
        "/v1/images/edits",
        {"model": "demo", "prompt": "x"},
        [("image", ("a.png", bytes(40 * MB), "image/png"))],
    )
    expect(response, 413)


def test_wrong_content_type_for_multipart_routes(image_system: ImageSystem) -> None:
    expect(
        post_json(image_system, {"prompt": "x"}, path="/v1/images/edits"), 400, code="invalid_content_type"
    )


def test_system_still_serves_after_bad_input(image_system: ImageSystem) -> None:
    result = image_system.client().images.generate(
        model="demo", prompt="still fine", response_format="b64_json", extra_body={"steps": 1}
    )
    assert decode_b64(result.data[0].b64_json).size == (64, 64)
    response = _edit(image_system, GOOD, ("m.png", png_bytes(alpha_mask(64, 64, (0, 0, 8, 8))), "image/png"))
    assert response.status_code == 200, response.text
    unknown_path = httpx.get(
        f"{image_system.router.url}/v1/nope", headers={"authorization": f"Bearer {image_system.api_key}"}
    )
    expect(unknown_path, 404)
    wrong_method = httpx.get(
        f"{image_system.router.url}/v1/images/generations",
        headers={"authorization": f"Bearer {image_system.api_key}"},
    )
    expect(wrong_method, 405)


def test_jpeg_and_webp_uploads_are_accepted(image_system: ImageSystem) -> None:
    for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        response = _edit(image_system, ("a", png_bytes(gradient(64, 64), fmt), mime))
        assert response.status_code == 200, response.text
        assert decode_b64(response.json()["data"][0]["b64_json"]).size == (64, 64)
