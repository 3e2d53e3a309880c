"""How OpenAI's ``quality`` and ``style`` map onto stable-diffusion.cpp settings.

Start from the model profile (``model.toml``): ``steps``, ``cfg_scale``, ``sampler``,
``scheduler``, ``negative_prompt``. Then:

| parameter | value                          | effect                                          |
|-----------|--------------------------------|-------------------------------------------------|
| quality   | low                            | steps x 0.5 (at least 1)                        |
| quality   | standard, medium, auto, (none) | profile steps                                   |
| quality   | hd, high                       | steps x 2 (at most 150)                         |
| style     | vivid                          | cfg_scale x 1.25 (models with cfg_scale > 1)    |
| style     | natural                        | cfg_scale x 0.85, never below 1                 |

Explicit extras (``steps``, ``cfg_scale``, ``sampler``, ``scheduler``, ``negative_prompt``,
``guidance``, ``flow_shift``) win over both. ``guidance`` (distilled guidance of Flux-type models)
and ``flow_shift`` stay unset when neither the request nor the profile sets them: the binding's
defaults then apply (guidance 3.5; flow_shift "inf", the model's own). ``vae_tiling`` and
``cache_mode`` come from the profile only (engine options of the operator's).

Guidance-free models (profile ``cfg_scale`` <= 1, e.g. sd-turbo) ignore ``style``: raising their
cfg would double the work and spoil the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlb_node.stable_diffusion.models.model_folder import ModelProfile
from llmlb_plugins.images.protocol import EngineExtras

QUALITY_STEP_FACTOR = {"low": 0.5, "standard": 1.0, "medium": 1.0, "auto": 1.0, "hd": 2.0, "high": 2.0}
STYLE_CFG_FACTOR = {"vivid": 1.25, "natural": 0.85}
MAX_STEPS = 150


@dataclass(frozen=True)
class EngineSettings:
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str | None
    negative_prompt: str
    guidance: float | None = None
    flow_shift: float | None = None
    vae_tiling: bool = False
    cache_mode: str | None = None


def engine_settings(
    extras: EngineExtras, profile: ModelProfile, *, quality: str | None, style: str | None
) -> EngineSettings:
    steps = extras.steps
    if steps is None:
        factor = QUALITY_STEP_FACTOR.get(quality or "standard", 1.0)
        steps = min(MAX_STEPS, max(1, round(profile.steps * factor)))
    cfg = extras.cfg_scale
    if cfg is None:
        cfg = profile.cfg_scale
        if style and profile.cfg_scale > 1.0:
            cfg = max(1.0, round(cfg * STYLE_CFG_FACTOR[style], 3))
    return EngineSettings(
        steps=steps,
        cfg_scale=cfg,
        sampler=extras.sampler or profile.sampler,
        scheduler=extras.scheduler or profile.scheduler,
        negative_prompt=extras.negative_prompt
        if extras.negative_prompt is not None
        else profile.negative_prompt,
        guidance=extras.guidance if extras.guidance is not None else profile.guidance,
        flow_shift=extras.flow_shift if extras.flow_shift is not None else profile.flow_shift,
        vae_tiling=profile.vae_tiling,
        cache_mode=profile.cache_mode,
    )
