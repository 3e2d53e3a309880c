"""Images API request schemas (msgspec) and the value sets they accept.

Owned by the images plugin and shared with the node's StableDiffusion runtime, so router and
node accept exactly the same requests. JSON is decoded strictly: ``{"n": "2"}`` is a 400.
Engine extras (``negative_prompt``, ``seed``, ``steps``, ``cfg_scale``, ``sampler``,
``scheduler``, ``strength``, ``guidance``, ``flow_shift``, ``loras``) arrive as extra body fields
(the SDK's ``extra_body``).

Streaming (``stream: true``): the answer is server-sent events, each ``event: <type>`` plus
``data: <json>``, exactly the official SDK's ``ImageGenStreamEvent`` / ``ImageEditStreamEvent``:
for each image, ``partial_images`` partial-image events (``partial_image_index`` 0, 1, ...) and
then one completed event. llmlb adds ``image_index`` (0-based position of the image in the job,
for ``n > 1``) and ``seed``; the SDK keeps extra fields. A failure after the first event is an
``error`` event (``{"type": "error", "error": {...}}``), which the SDK raises as ``APIError``.
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
MAX_PARTIAL_IMAGES = 3
# Images an edit may carry (OpenAI allows 16): the first is the init image, the others are
# reference images for models that take them.
MAX_EDIT_IMAGES = 16
MAX_LORAS = 8

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
Guidance = Annotated[float, msgspec.Meta(ge=0.0, le=30.0)]
FlowShift = Annotated[float, msgspec.Meta(gt=0.0, le=100.0)]
PartialImages = Annotated[int, msgspec.Meta(ge=0, le=MAX_PARTIAL_IMAGES)]
# A LoRA's name: its file name in the LoRA folder without the extension. A strict charset, so a
# name can never be a path (no "/", no "..").
LoraName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")]
LoraWeight = Annotated[float, msgspec.Meta(ge=-4.0, le=4.0)]
Compression = Annotated[int, msgspec.Meta(ge=0, le=100)]
Prompt = Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS)]
NegativePrompt = Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS)]


class LoraRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One LoRA to apply: ``{"name": "pixel-art", "weight": 0.8}``."""

    name: LoraName
    weight: LoraWeight = 1.0


class EngineExtras(msgspec.Struct, kw_only=True):
    """stable-diffusion.cpp settings a client may set through extra body fields."""

    negative_prompt: NegativePrompt | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    cfg_scale: CfgScale | None = None
    sampler: Sampler | None = None
    scheduler: Scheduler | None = None
    strength: Strength | None = None
    # Distilled guidance of models that take it (Flux dev/schnell/Kontext, Chroma, ...).
    guidance: Guidance | None = None
    # Flow-shift of flow models (SD3.x, Qwen-Image, Z-Image, ...); default: the model's.
    flow_shift: FlowShift | None = None
    loras: Annotated[list[LoraRef], msgspec.Meta(max_length=MAX_LORAS)] | None = None


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
    partial_images: PartialImages | None = None


class ImageEditFields(ImageOptions, kw_only=True):
    """Plain form fields of ``/v1/images/edits`` (files are parsed separately)."""

    prompt: Prompt
    quality: Quality | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Background | None = None
    input_fidelity: str | None = None
    stream: bool | None = None
    partial_images: PartialImages | None = None


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


# --- streaming -----------------------------------------------------------------------------
class ImageTokensDetails(msgspec.Struct, kw_only=True):
    image_tokens: int = 0
    text_tokens: int = 0


class ImageUsage(msgspec.Struct, kw_only=True):
    """OpenAI's token usage of an image; llmlb counts no tokens and sends zeros (the SDK's
    completed events require the object)."""

    input_tokens: int = 0
    input_tokens_details: ImageTokensDetails = msgspec.field(default_factory=ImageTokensDetails)
    output_tokens: int = 0
    total_tokens: int = 0


class ImageStreamEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One streamed event: a partial image (``partial_image_index`` set) or a completed image
    (``usage`` set). ``type`` is ``image_generation.partial_image``,
    ``image_generation.completed``, ``image_edit.partial_image`` or ``image_edit.completed``."""

    type: str
    b64_json: str
    created_at: int
    size: str
    quality: str
    background: str
    output_format: str
    partial_image_index: int | None = None
    usage: ImageUsage | None = None
    image_index: int = 0
    seed: int | None = None


def stream_event_types(edit: bool) -> tuple[str, str]:
    """The (partial, completed) event types of generations or edits."""
    prefix = "image_edit" if edit else "image_generation"
    return f"{prefix}.partial_image", f"{prefix}.completed"


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


# --- model adverts -------------------------------------------------------------------------
class ImageModelDefaults(msgspec.Struct, kw_only=True):
    """A model's sampling defaults (its profile), for operators."""

    steps: int | None = None
    cfg_scale: float | None = None
    guidance: float | None = None
    sampler: str | None = None


class ImageModelSupports(msgspec.Struct, kw_only=True):
    """What a model can do."""

    mask: bool | None = None  # edits with a mask
    reference_images: int | None = None  # images an edit may pass as references (0: none)
    loras: list[str] | None = None  # the names of the LoRAs it offers
    partial_images: bool | None = None  # streamed previews


class ImageModelDetails(msgspec.Struct, kw_only=True):
    """What a node says about an image model: ``ModelAdvert.details``, as JSON the fields by
    name. The node's ``stable_diffusion`` runtime sets every field; the router reads them as
    untrusted input (``model_info.read_details``), where ``None`` is a field a node did not send,
    or sent with a value the router does not take."""

    family: str | None = None
    label: str | None = None
    native_size: str | None = None  # "WxH"
    defaults: ImageModelDefaults | None = None
    supports: ImageModelSupports | None = None
    weights: list[str] | None = None  # the model's weights files, by name
