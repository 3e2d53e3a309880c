"""What the nodes say an image model can do, read from their adverts' ``details`` (untrusted).

A node's stable_diffusion runtime advertises each model with ``details``, an
:class:`~llmlb_plugins.images.protocol.ImageModelDetails`: ``family``, ``label``,
``native_size`` (``"WxH"``) and ``supports``: ``mask`` (edits with a mask), ``reference_images``
(how many images an edit may pass as references; 0: none), ``loras`` (the LoRA names it has) and
``partial_images`` (streamed previews). :func:`read_details` reads one node's details into that
struct value by value: each is type-checked and bounded on its own, and one that fails reads as
unknown (a LoRA list keeps its good names), so a node's odd details can neither break
``/v1/models`` nor a request.

:func:`model_info` merges what every online node serving the model says, so that a request the
router lets through works on whichever node takes it: ``reference_images`` is the smallest
limit, ``loras`` the names every node has, ``mask`` and ``partial_images`` hold only when every
node says so. A node that says nothing about a feature is left out of that feature's merge; when
no node says anything about it, it is unknown (``None``: not shown, not checked by the router;
the node checks). :func:`describe_model` is the capability's ``describe_model``
(``/v1/models``). The checks the router makes before sending an edit or a request with LoRAs are
:func:`check_references`, :func:`check_mask` (the node makes these two with the same functions
of ``validation``) and :func:`check_loras`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from llmlb_core.api import ModelCatalog, OpenAIError
from llmlb_plugins.images.protocol import (
    MAX_EDIT_IMAGES,
    ImageModelDetails,
    ImageModelSupports,
    LoraRef,
    parse_size,
)
from llmlb_plugins.images.validation import check_image_count, check_mask_supported

S = TypeVar("S", bound=msgspec.Struct)

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


def _size(value: Any) -> str | None:
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    return f"{width}x{height}" if 0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_EDIT_IMAGES)


def _loras(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [name for name in value[:MAX_LISTED_LORAS] if isinstance(name, str) and _LORA_NAME.fullmatch(name)]


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _read(raw: Any, type_: type[S], checks: Mapping[str, Callable[[Any], Any]]) -> S | None:
    """``raw`` as the struct ``type_``, each field checked on its own by ``checks`` (field name ->
    the value or None); None when ``raw`` is no mapping."""
    if not isinstance(raw, Mapping):
        return None
    return type_(**{name: check(raw.get(name)) for name, check in checks.items()})


_SUPPORTS = {"mask": _flag, "reference_images": _count, "loras": _loras, "partial_images": _flag}


def _supports(value: Any) -> ImageModelSupports | None:
    return _read(value, ImageModelSupports, _SUPPORTS)


# What the router reads of a node's details (defaults and weights are for operators).
_DETAILS = {"family": _family, "label": _label, "native_size": _size, "supports": _supports}


def read_details(raw: Any) -> ImageModelDetails:
    """One node's ``details`` as the struct the node wrote, every value checked (see the module
    docstring): what is missing or does not pass reads as ``None``."""
    return _read(raw, ImageModelDetails, _DETAILS) or ImageModelDetails()


def model_info(details: Sequence[Mapping[str, Any]]) -> ModelInfo:
    """What the nodes serving a model say about it (one ``details`` mapping per node), merged."""
    nodes = [read_details(d) for d in details]
    supports = [n.supports for n in nodes if n.supports is not None]
    masks = [s.mask for s in supports if s.mask is not None]
    references = [s.reference_images for s in supports if s.reference_images is not None]
    lora_sets = [frozenset(s.loras) for s in supports if s.loras is not None]
    partials = [s.partial_images for s in supports if s.partial_images is not None]
    sizes = [parse_size(n.native_size) for n in nodes if n.native_size is not None]
    return ModelInfo(
        family=_first([n.family for n in nodes]),
        label=_first([n.label for n in nodes]),
        native_size=_first(sizes),
        mask=all(masks) if masks else None,
        reference_images=min(references) if references else None,
        loras=tuple(sorted(frozenset.intersection(*lora_sets))) if lora_sets else None,
        partial_images=all(partials) if partials else None,
    )


def describe_model(details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The images capability's ``describe_model``: see :meth:`ModelInfo.describe`."""
    return model_info(details).describe()


def check_references(models: ModelCatalog, model: str, info: ModelInfo, count: int) -> None:
    """400 when an edit carries more images than ``model`` takes
    (:func:`~llmlb_plugins.images.validation.check_image_count`), naming the online image models
    that take reference images."""

    def takers() -> str:
        others = []
        for other in models.online(FLAGS):
            limit = model_info(models.details(other, FLAGS)).reference_images
            if other != model and limit:
                others.append(f"{other} (up to {limit})")
        return f"; online models that take reference images: {', '.join(others)}" if others else ""

    check_image_count(model, count, info.reference_images, hint=takers)


def check_mask(model: str, info: ModelInfo) -> None:
    """400 for a mask sent to a model that the nodes say takes none
    (:func:`~llmlb_plugins.images.validation.check_mask_supported`)."""
    check_mask_supported(model, info.mask)


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
