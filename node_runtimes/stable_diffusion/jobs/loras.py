"""LoRAs, all of the node's handling of them: which a model offers, which a request names (the
``loras`` extra and sd.cpp's ``<lora:name:weight>`` prompt tags), the tags the binding gets, and
how they are applied.

- A model offers the LoRAs of its folder (:attr:`ModelFolder.loras`) whose path fits in a tag,
  none when its family takes none (:class:`OfferedLoras`, which also advertises their names).

The binding (stable-diffusion-cpp-python 0.4.7, ``_extract_and_build_loras``) turns every
``<lora:PATH:weight>`` tag of a prompt into a LoRA to load, PATH absolute or relative to its LoRA
folder: a prompt could make the node open any file. So the node never hands a client's tag over:

- every tag of the prompt and of the negative prompt is parsed here, with the binding's own
  pattern, until none is left (removing one tag can join the text around it into a new one);
- each name must be one of the model's LoRAs (:attr:`ModelFolder.loras`, a name -> file map
  built from the folders the operator set up), its weight a number within ``LoraWeight``'s
  range; anything else is a 400 (``lora_not_found`` lists the available ones);
- the tags are removed from both prompts, and the engine passes the binding only tags it builds
  itself (:func:`prompt_with_loras`), with the absolute path of a known file, in front of the
  prompt, so no text of the client's can run into them.

A LoRA changes the model's weights for the whole generation, so a tag in the negative prompt
applies it like one in the prompt. Weights of one LoRA named several times add up (the binding
does the same). The engine loads every model with ``lora_apply_mode`` :data:`LORA_APPLY_MODE`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmlb_node.api import OpenAIError
from llmlb_node.stable_diffusion.models.model_folder import ModelFolder
from llmlb_plugins.images.protocol import LoraRef

log = logging.getLogger("llmlb.node.sd")

# The binding's pattern (stable_diffusion.py, _extract_and_build_loras): keep it identical.
LORA_TAG = re.compile(r"<lora:([^:>]+):([^>]+)>")
MIN_WEIGHT, MAX_WEIGHT = -4.0, 4.0  # protocol.LoraWeight
# Characters that would break a tag the node builds (a LoRA path holding one is not used).
TAG_BREAKERS = frozenset(":<>")
# LoRAs join the computation per call instead of being merged into the weights: a merge and
# un-merge in f16 leaves the weights slightly changed for every later request (measured: mean
# pixel difference 0.05 after one LoRA request). The engine loads every model with it.
LORA_APPLY_MODE = "at_runtime"


@dataclass(frozen=True)
class LoraPlan:
    """The prompts without their tags and the LoRAs to apply (file -> summed weight)."""

    prompt: str
    negative_prompt: str
    loras: dict[Path, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(path.stem for path in self.loras)


def _unknown(name: str, model: str, available: Mapping[str, Path], param: str) -> OpenAIError:
    known = ", ".join(sorted(available)) or "none"
    return OpenAIError(
        400,
        f"Unknown LoRA '{name[:80]}' for model '{model}'. Available LoRAs: {known}",
        param=param,
        code="lora_not_found",
    )


def _weight(raw: str, name: str, param: str) -> float:
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise OpenAIError(
            400,
            f"LoRA '{name[:80]}' has weight '{raw[:40]}'; a weight is a number from "
            f"{MIN_WEIGHT:g} to {MAX_WEIGHT:g}",
            param=param,
            code="invalid_lora_weight",
        )
    return weight


def strip_tags(text: str, param: str) -> tuple[str, list[tuple[str, float]]]:
    """``text`` without any LoRA tag, and the (name, weight) of each tag, in order. Tags are
    removed one at a time until none matches, so text that a removal joins into a new tag is
    parsed too."""
    found: list[tuple[str, float]] = []
    while (match := LORA_TAG.search(text)) is not None:
        name, raw_weight = match.group(1), match.group(2)
        found.append((name, _weight(raw_weight.strip(), name, param)))
        text = text[: match.start()] + text[match.end() :]
    return text, found


def plan_loras(
    *,
    prompt: str,
    negative_prompt: str,
    requested: Sequence[LoraRef] | None,
    available: Mapping[str, Path],
    supported: bool,
    model: str,
    family_label: str,
) -> LoraPlan:
    """Check every LoRA a request names (extra and tags) against ``available``."""
    prompt, in_prompt = strip_tags(prompt, "prompt")
    negative_prompt, in_negative = strip_tags(negative_prompt, "negative_prompt")
    named = [(ref.name, ref.weight, "loras") for ref in requested or []]
    named += [(name, weight, "prompt") for name, weight in in_prompt]
    named += [(name, weight, "negative_prompt") for name, weight in in_negative]
    if named and not supported:
        raise OpenAIError(
            400,
            f"Model '{model}' ({family_label}) does not take LoRAs",
            param=named[0][2],
            code="loras_not_supported",
        )
    loras: dict[Path, float] = {}
    for name, weight, param in named:
        path = available.get(name)
        if path is None:
            raise _unknown(name, model, available, param)
        loras[path] = loras.get(path, 0.0) + weight
    for path, weight in loras.items():
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise OpenAIError(
                400,
                f"LoRA '{path.stem}' is named with weights that add up to {weight:g}; "
                f"the limit is {MIN_WEIGHT:g} to {MAX_WEIGHT:g}",
                param="loras",
                code="invalid_lora_weight",
            )
    return LoraPlan(prompt=prompt, negative_prompt=negative_prompt, loras=loras)


def usable_path(path: Path) -> bool:
    """Whether a LoRA file's absolute path can stand in a tag (no ``:``, ``<`` or ``>``)."""
    return not TAG_BREAKERS & set(str(path.absolute()))


def prompt_with_loras(prompt: str, loras: Mapping[Path, float]) -> str:
    """The prompt the binding gets: one tag per LoRA (absolute path, weight) in front of a
    prompt that holds no tag (:func:`strip_tags`)."""
    tags = []
    for path, weight in loras.items():
        absolute = path.absolute()
        if not usable_path(absolute):
            raise ValueError(f"LoRA path {absolute} holds ':', '<' or '>'")
        tags.append(f"<lora:{absolute}:{weight!r}>")
    return "".join(tags) + prompt


class OfferedLoras:
    """The LoRAs of each model that a request may name: those of its folder whose path fits in a
    tag (:func:`usable_path`); none when its family takes none. A LoRA that cannot be offered is
    logged once."""

    def __init__(self) -> None:
        self._unusable: set[Path] = set()

    def of(self, folder: ModelFolder) -> dict[str, Path]:
        """The model's LoRAs by name (a name the protocol accepts, a path that fits in a tag)."""
        if not folder.family.loras:
            return {}
        usable = {}
        for name, path in folder.loras.items():
            if not usable_path(path):
                if path not in self._unusable:
                    self._unusable.add(path)
                    log.warning("LoRA %s is not offered: its path holds ':', '<' or '>'; move it", path)
            else:
                usable[name] = path
        return usable

    def plan(
        self, folder: ModelFolder, *, prompt: str, negative_prompt: str, requested: Sequence[LoraRef] | None
    ) -> LoraPlan:
        """:func:`plan_loras` for a request to ``folder``'s model."""
        return plan_loras(
            prompt=prompt,
            negative_prompt=negative_prompt,
            requested=requested,
            available=self.of(folder),
            supported=folder.family.loras,
            model=folder.id,
            family_label=folder.family.label,
        )
