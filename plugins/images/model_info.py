"""What the nodes say an image model can do, read from their adverts' ``details`` (untrusted).

A node's stable_diffusion runtime advertises each model with ``details``: ``family``, ``label``,
``native_size`` (``"WxH"``) and ``supports``: ``mask`` (edits with a mask), ``reference_images``
(how many images an edit may pass as references; 0: none), ``loras`` (the LoRA names it has) and
``partial_images`` (streamed previews). Every value is type-checked and bounded here; anything
else is ignored, so a node's odd details can neither break ``/v1/models`` nor a request.

:func:`model_info` merges what every online node serving the model says, so that a request the
router lets through works on whichever node takes it: ``reference_images`` is the smallest
limit, ``loras`` the names every node has, ``mask`` and ``partial_images`` hold only when every
node says so. A node that says nothing about a feature is left out of that feature's merge; when
no node says anything about it, it is unknown (``None``: not shown, not checked by the router;
the node checks). :func:`describe_model` is the capability's ``describe_model``
(``/v1/models``). The checks the router makes before sending an edit or a request with LoRAs are
:func:`check_references`, :func:`check_mask` and :func:`check_loras`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmlb_core.api import ModelCatalog, OpenAIError
from llmlb_plugins.images.protocol import MAX_EDIT_IMAGES, LoraRef

FLAGS = frozenset({"image_generation"})
# The largest image side a node may advertise (and the router bounds answers by).
MAX_SIDE = 4096
# LoRA names read from one node's advert (more are ignored).
MAX_LISTED_LORAS = 1024
_FAMILY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_MAX_LABEL = 128


@dataclass(frozen=True)
class ModelInfo:
    """What the router knows about an image model (``None``: unknown)."""

    family: str | None = None
    label: str | None = None
    native_size: tuple[int, int] | None = None
    mask: bool | None = None
    reference_images: int | None = None
    loras: tuple[str, ...] | None = None
    partial_images: bool | None = None

    def describe(self) -> dict[str, Any]:
        """The model object's ``details`` in ``/v1/models``: only what is known."""
        supports = {
            "mask": self.mask,
            "reference_images": self.reference_images,
            "loras": list(self.loras) if self.loras is not None else None,
            "partial_images": self.partial_images,
        }
        out: dict[str, Any] = {
            "family": self.family,
            "label": self.label,
            "native_size": f"{self.native_size[0]}x{self.native_size[1]}" if self.native_size else None,
            "supports": {k: v for k, v in supports.items() if v is not None},
        }
        return {k: v for k, v in out.items() if v}


def _family(value: Any) -> str | None:
    return value if isinstance(value, str) and _FAMILY.fullmatch(value) else None


def _label(value: Any) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_LABEL or not value.isprintable():
        return None
    return value


def _size(value: Any) -> tuple[int, int] | None:
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    return (width, height) if 0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_EDIT_IMAGES)


def _loras(value: Any) -> frozenset[str] | None:
    if not isinstance(value, list):
        return None
    return frozenset(
        name for name in value[:MAX_LISTED_LORAS] if isinstance(name, str) and _LORA_NAME.fullmatch(name)
    )


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def model_info(details: Sequence[Mapping[str, Any]]) -> ModelInfo:
    """What the nodes serving a model say about it (one ``details`` mapping per node), merged."""
    nodes = [d for d in details if isinstance(d, Mapping)]
    supports = [s for s in (d.get("supports") for d in nodes) if isinstance(s, Mapping)]
    masks = [m for m in (_flag(s.get("mask")) for s in supports) if m is not None]
    references = [r for r in (_count(s.get("reference_images")) for s in supports) if r is not None]
    lora_sets = [lo for lo in (_loras(s.get("loras")) for s in supports) if lo is not None]
    partials = [p for p in (_flag(s.get("partial_images")) for s in supports) if p is not None]
    return ModelInfo(
        family=_first([_family(d.get("family")) for d in nodes]),
        label=_first([_label(d.get("label")) for d in nodes]),
        native_size=_first([_size(d.get("native_size")) for d in nodes]),
        mask=all(masks) if masks else None,
        reference_images=min(references) if references else None,
        loras=tuple(sorted(frozenset.intersection(*lora_sets))) if lora_sets else None,
        partial_images=all(partials) if partials else None,
    )


def describe_model(details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The images capability's ``describe_model``: see :meth:`ModelInfo.describe`."""
    return model_info(details).describe()


def images_allowed(info: ModelInfo) -> int:
    """How many ``image[]`` files an edit of this model may carry: its reference-image limit
    (every image is a reference for the families that take them), and 1 for the others."""
    if info.reference_images is None:
        return MAX_EDIT_IMAGES  # unknown: the node checks
    return max(1, info.reference_images)


def check_references(models: ModelCatalog, model: str, info: ModelInfo, count: int) -> None:
    """400 when an edit carries more images than ``model`` takes, naming its limit and the online
    image models that take reference images."""
    allowed = images_allowed(info)
    if count <= allowed:
        return
    others = []
    for other in models.online(FLAGS):
        limit = model_info(models.details(other, FLAGS)).reference_images
        if other != model and limit:
            others.append(f"{other} (up to {limit})")
    takes = (
        f"takes at most {allowed} image(s)"
        if info.reference_images
        else "takes one image and no reference images"
    )
    hint = f"; online models that take reference images: {', '.join(others)}" if others else ""
    raise OpenAIError(
        400,
        f"{count} images were sent, but model '{model}' {takes}{hint}",
        param="image",
        code="too_many_images",
    )


def check_mask(model: str, info: ModelInfo) -> None:
    if info.mask is False:
        raise OpenAIError(
            400,
            f"Model '{model}' does not support edits with a mask; send the image without one",
            param="mask",
            code="mask_not_supported",
        )


def check_loras(model: str, info: ModelInfo, loras: Sequence[LoraRef] | None) -> None:
    """400 ``lora_not_found`` for a LoRA that not every node serving ``model`` has."""
    if not loras or info.loras is None:
        return
    unknown = [lora.name for lora in loras if lora.name not in info.loras]
    if unknown:
        available = ", ".join(info.loras) if info.loras else "none"
        raise OpenAIError(
            400,
            f"Unknown LoRA {', '.join(repr(n) for n in unknown)} for model '{model}'; available: {available}",
            param="loras",
            code="lora_not_found",
        )
