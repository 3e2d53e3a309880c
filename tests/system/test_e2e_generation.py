"""The first image through the whole system: openai SDK -> router process -> node process ->
real stable-diffusion.cpp on the synthetic checkpoint -> PNGs back."""

from __future__ import annotations

import base64
import io

import openai
from PIL import Image

from tests.support.servers import Proc


def test_sdk_generates_two_distinct_pngs_of_requested_size(router: Proc, sd_node: Proc, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0)
    result = client.images.generate(
        model="demo",
        prompt="a white cat sitting on a windowsill",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"steps": 1},
    )
    assert len(result.data) == 2
    images = []
    for item in result.data:
        assert item.b64_json
        raw = base64.b64decode(item.b64_json)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(raw))
        image.load()
        assert image.format == "PNG"
        assert image.size == (256, 256)
        images.append(image.tobytes())
    assert images[0] != images[1]
    assert result.size == "256x256"
