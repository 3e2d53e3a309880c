"""Request checks shared by the router (routes, dispatch) and the node's stable_diffusion runtime:
prompt, size, the form fields of edits and variations, and what a model takes in an edit (the
number of images, a mask): the router checks against what the nodes advertise, the node
against the model's family, with the same functions."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from llmlb_core.api import OpenAIError, ParsedForm, check_json_bytes, convert_fields
from llmlb_plugins.images.protocol import MAX_EDIT_IMAGES, SIZE_AUTO, SIZES, parse_size

T = TypeVar("T")

# The official SDKs send a list of objects in a form as one field per member and item.
_SDK_LORA_FIELD = re.compile(r"loras\[\]\[(name|weight)\]")

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def require_prompt(prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise OpenAIError(400, "prompt must be a non-empty string", param="prompt", code="empty_prompt")
    return prompt


def _model(model: str, label: str | None) -> str:
    return f"'{model}' ({label})" if label else f"'{model}'"


def images_allowed(reference_images: int | None) -> int:
    """How many ``image[]`` files an edit of a model may carry: its reference-image limit (every
    image is a reference for the families that take them), and 1 for the others; unknown
    (``None``): ``MAX_EDIT_IMAGES``, the node checks."""
    if reference_images is None:
        return MAX_EDIT_IMAGES
    return max(1, reference_images)


def check_image_count(
    model: str,
    count: int,
    reference_images: int | None,
    *,
    label: str | None = None,
    hint: Callable[[], str] | None = None,
) -> None:
    """400 ``too_many_images`` when an edit carries more images than ``model`` takes
    (:func:`images_allowed`); ``label`` (the family's) follows the model's name, ``hint()`` ends
    the message."""
    allowed = images_allowed(reference_images)
    if count <= allowed:
        return
    takes = (
        f"takes at most {allowed} image(s)" if reference_images else "takes one image and no reference images"
    )
    raise OpenAIError(
        400,
        f"{count} images were sent, but model {_model(model, label)} {takes}{hint() if hint else ''}",
        param="image",
        code="too_many_images",
    )


def check_mask_supported(model: str, mask: bool | None, *, label: str | None = None) -> None:
    """400 ``mask_not_supported`` for a mask sent to a model that takes none (``mask`` False;
    ``None``: unknown, not checked)."""
    if mask is False:
        raise OpenAIError(
            400,
            f"Model {_model(model, label)} does not support edits with a mask; send the image without one",
            param="mask",
            code="mask_not_supported",
        )


def nearest_size(width: int, height: int) -> str:
    """The supported size closest in aspect ratio first, then in area."""

    def distance(candidate: str) -> tuple[float, float]:
        w, h = parse_size(candidate)
        return (abs(math.log((w / h) / (width / height))), abs(math.log((w * h) / (width * height))))

    return min(SIZES, key=distance)


def resolve_size(size: str | None, *, fallback: bool) -> tuple[str, str | None]:
    """Return (size to use, the unsupported size it replaced or None)."""
    if size is None or size == SIZE_AUTO:
        return SIZE_AUTO, None
    if size in SIZES:
        return size, None
    match = _SIZE_RE.match(size)
    if fallback and match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
        return nearest_size(int(match.group(1)), int(match.group(2))), size
    raise OpenAIError(
        400,
        f"Invalid size '{size}'. Supported sizes: {', '.join((*SIZES, SIZE_AUTO))}",
        param="size",
        code="invalid_size",
    )


def form_loras(form: ParsedForm) -> Any:
    """The ``loras`` extra of a form, unchecked (:func:`form_request` converts it): one ``loras``
    field holding JSON (``[{"name": "x", "weight": 0.8}]``, what the router sends a node), or
    the official SDK's fields ``loras[][name]``, ``loras[][weight]`` (an edit's ``extra_body``),
    in the order sent: a ``name`` starts the next LoRA. None: the form has none."""
    if "loras" in form.fields:
        text = form.fields["loras"]
        try:
            check_json_bytes(text.encode())
            loras = msgspec.json.decode(text)
        except (OpenAIError, msgspec.DecodeError):
            raise OpenAIError(
                400, 'loras must be a JSON list: [{"name": "...", "weight": 1.0}]', param="loras"
            ) from None
        return loras
    items: list[dict[str, Any]] = []
    for name, value in form.items:
        match = _SDK_LORA_FIELD.fullmatch(name)
        if match is None:
            continue
        if match.group(1) == "name" or not items or "weight" in items[-1]:
            items.append({})
        items[-1][match.group(1)] = value
    return items or None


def form_request(form: ParsedForm, type_: type[T]) -> T:
    """A form's plain fields as the typed request ``type_`` (``"0.2"`` is a float), its
    ``loras`` extra included (:func:`form_loras`); a bad value is a 400 naming the field."""
    fields: dict[str, Any] = {k: v for k, v in form.fields.items() if not k.startswith("loras")}
    loras = form_loras(form)
    if loras is not None:
        fields["loras"] = loras
    return convert_fields(fields, type_)


def form_value(value: Any) -> str:
    """A request field as the router writes it into a node's form: ``true``/``false``, JSON for
    a list (``loras``), else the value's text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return msgspec.json.encode(value).decode()
    return str(value)
