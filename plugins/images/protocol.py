"""Images API request schemas (msgspec) and the value sets they accept.

Owned by the images plugin and shared with the node's StableDiffusion runtime, so router and
node accept exactly the same requests. JSON is decoded strictly: ``{"n": "2"}`` is a 400.
Engine extras (``negative_prompt``, ``seed``, ``steps``, ``cfg_scale``, ``sampler``,
``scheduler``, ``strength``) arrive as extra body fields (the SDK's ``extra_body``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

SIZES: tuple[str, ...] = (
    "256x256",
    "512x512",
    "1024x1024",
    "1792x1024",
    "1024x1792",
    "1536x1024",
    "1024x1536",
)
SIZE_AUTO = "auto"
MAX_N = 10
MAX_PROMPT_CHARS = 32_000
MAX_SEED = 2**31 - 1

Quality = Literal["standard", "hd", "low", "medium", "high", "auto"]
Style = Literal["vivid", "natural"]
ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["transparent", "opaque", "auto"]
Sampler = Literal[
    "euler",
    "euler_a",
    "heun",
    "dpm2",
    "dpm++2s_a",
    "dpm++2m",
    "dpm++2mv2",
    "ipndm",
    "ipndm_v",
    "lcm",
    "ddim_trailing",
    "tcd",
    "res_multistep",
    "res_2s",
    "er_sde",
]
Scheduler = Literal[
    "discrete",
    "karras",
    "exponential",
    "ays",
    "gits",
    "sgm_uniform",
    "simple",
    "smoothstep",
    "kl_optimal",
    "lcm",
    "bong_tangent",
]

N = Annotated[int, msgspec.Meta(ge=1, le=MAX_N)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEED)]
Steps = Annotated[int, msgspec.Meta(ge=1, le=150)]
CfgScale = Annotated[float, msgspec.Meta(ge=0.0, le=30.0)]
Strength = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Compression = Annotated[int, msgspec.Meta(ge=0, le=100)]
Prompt = Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS)]
NegativePrompt = Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS)]


class EngineExtras(msgspec.Struct, kw_only=True):
    """stable-diffusion.cpp settings a client may set through extra body fields."""

    negative_prompt: NegativePrompt | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    cfg_scale: CfgScale | None = None
    sampler: Sampler | None = None
    scheduler: Scheduler | None = None
    strength: Strength | None = None


class ImageOptions(EngineExtras, kw_only=True):
    """Fields every Images endpoint shares."""

    model: str | None = None
    n: N = 1
    size: str | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None


class ImageGenerationRequest(ImageOptions, kw_only=True):
    prompt: Prompt
    quality: Quality | None = None
    style: Style | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Background | None = None
    moderation: str | None = None
    stream: bool | None = None
    partial_images: Annotated[int, msgspec.Meta(ge=0, le=3)] | None = None


class ImageEditFields(ImageOptions, kw_only=True):
    """Plain form fields of ``/v1/images/edits`` (files are parsed separately)."""

    prompt: Prompt
    quality: Quality | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Background | None = None
    input_fidelity: str | None = None
    stream: bool | None = None
    partial_images: Annotated[int, msgspec.Meta(ge=0, le=3)] | None = None


class ImageVariationFields(ImageOptions, kw_only=True):
    """Plain form fields of ``/v1/images/variations``."""

    output_format: OutputFormat | None = None
    output_compression: Compression | None = None


class ImageData(msgspec.Struct, kw_only=True, omit_defaults=True):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None


class ImagesResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    created: int
    data: list[ImageData]
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None
    background: str | None = None


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)
