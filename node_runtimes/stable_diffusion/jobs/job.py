"""A request as one stable-diffusion.cpp job: :func:`sdcpp_job` translates it, once, into the
binding's ``generate_image`` arguments (:class:`GenerateArgs`, the binding's own names), which
the engine passes as they are (:meth:`GenerateArgs.kwargs`), image by image.

Start from the model profile (``model.toml``): ``steps``, ``cfg_scale``, ``sampler``,
``scheduler``, ``negative_prompt``. Then OpenAI's ``quality`` and ``style``:

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

The LoRAs a request names are checked and turned into the tags the binding gets
(:mod:`.loras`); an init image goes with its ``strength``; a mask is handed over as
stable-diffusion.cpp reads it; preview frames are asked for only when a streamed answer wants
partial images and the model makes them (``preview_method``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from PIL import Image

from llmlb_node.stable_diffusion.jobs.loras import OfferedLoras, prompt_with_loras
from llmlb_node.stable_diffusion.models.model_folder import ModelFolder
from llmlb_plugins.images.protocol import EngineExtras

QUALITY_STEP_FACTOR = {"low": 0.5, "standard": 1.0, "medium": 1.0, "auto": 1.0, "hd": 2.0, "high": 2.0}
STYLE_CFG_FACTOR = {"vivid": 1.25, "natural": 0.85}
MAX_STEPS = 150
# stable-diffusion.cpp regenerates where its mask is white (255): it blends
# denoised * mask + init * (1 - mask) in latent space (tests/test_sd_engine.py proves it).
SD_MASK_REGENERATE = 255


class JobListener(Protocol):
    """Who hears of a job's images as they come (a streamed answer)."""

    def partial(self, image_index: int, partial_index: int, frame: Image.Image) -> None:
        """A preview frame of image ``image_index``. Called on the engine's worker thread: hand
        it over (``loop.call_soon_threadsafe``) and return."""

    def completed(self, image_index: int, image: Image.Image) -> None:
        """Image ``image_index`` is done. Called on the event loop."""


@dataclass(frozen=True)
class GenerateArgs:
    """The binding's ``generate_image`` arguments for one image, by its names (no callbacks,
    ``batch_count`` 1). ``None``: not passed, the binding's default applies."""

    prompt: str  # with the node's LoRA tags in front (loras.prompt_with_loras)
    negative_prompt: str
    width: int
    height: int
    cfg_scale: float
    sample_method: str
    sample_steps: int
    seed: int
    vae_tiling: bool = False
    scheduler: str | None = None
    guidance: float | None = None  # default 3.5
    flow_shift: float | None = None  # default inf: the model's own
    cache_mode: str | None = None
    init_image: Image.Image | None = None
    strength: float | None = None  # with init_image
    mask_image: Image.Image | None = None  # 255: regenerate here
    ref_images: list[Image.Image] | None = None
    preview_method: str | None = None  # with partial images for a listener

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments: every one that is set."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class SDJob:
    """A job for the engine: ``images`` images, image ``i`` made with ``args`` and the seed
    ``args.seed + i`` (the pixels stable-diffusion.cpp's own batch gives)."""

    args: GenerateArgs
    images: int = 1
    # Partial images per image (args.preview_method set), for the listener.
    partial_images: int = 0
    listener: JobListener | None = None

    def image(self, index: int) -> GenerateArgs:
        """The arguments of image ``index``."""
        return replace(self.args, seed=self.args.seed + index)

    def sampled_steps(self) -> int:
        """The sampling steps of one image: from an init image, sd.cpp samples only the last
        ``strength`` part of the steps."""
        args = self.args
        if args.init_image is None or args.strength is None:
            return args.sample_steps
        return max(1, int(args.sample_steps * args.strength))


def steps_for(extras: EngineExtras, profile_steps: int, quality: str | None) -> int:
    if extras.steps is not None:
        return extras.steps
    factor = QUALITY_STEP_FACTOR.get(quality or "standard", 1.0)
    return min(MAX_STEPS, max(1, round(profile_steps * factor)))


def cfg_scale_for(extras: EngineExtras, profile_cfg: float, style: str | None) -> float:
    if extras.cfg_scale is not None:
        return extras.cfg_scale
    if style and profile_cfg > 1.0:
        return max(1.0, round(profile_cfg * STYLE_CFG_FACTOR[style], 3))
    return profile_cfg


def sdcpp_job(
    extras: EngineExtras,
    folder: ModelFolder,
    loras: OfferedLoras,
    *,
    prompt: str,
    quality: str | None,
    style: str | None,
    size: tuple[int, int],
    seed: int,
    images: int,
    default_strength: float,
    init: Image.Image | None = None,
    mask: Image.Image | None = None,
    refs: list[Image.Image] | None = None,
    partial_images: int = 0,
    preview_method: str = "none",
) -> SDJob:
    """The job of a request to ``folder``'s model (see the module docstring): ``init`` and
    ``mask`` fitted to ``size`` already, ``mask`` OpenAI's way turned greyscale (255: edit here),
    ``default_strength`` the endpoint's (a request's ``strength`` wins). A LoRA the model does not offer is a
    400 (:meth:`OfferedLoras.plan`)."""
    profile = folder.profile
    negative_prompt = (
        extras.negative_prompt if extras.negative_prompt is not None else profile.negative_prompt
    )
    plan = loras.plan(folder, prompt=prompt, negative_prompt=negative_prompt, requested=extras.loras)
    previews = partial_images > 0 and preview_method != "none"
    cache_mode = profile.cache_mode if profile.cache_mode and profile.cache_mode != "disabled" else None
    strength = extras.strength if extras.strength is not None else default_strength
    sd_mask = None
    if mask is not None:
        sd_mask = mask if SD_MASK_REGENERATE == 255 else mask.point(lambda v: 255 - v)
    args = GenerateArgs(
        prompt=prompt_with_loras(plan.prompt, plan.loras),
        negative_prompt=plan.negative_prompt,
        width=size[0],
        height=size[1],
        cfg_scale=cfg_scale_for(extras, profile.cfg_scale, style),
        sample_method=extras.sampler or profile.sampler,
        sample_steps=steps_for(extras, profile.steps, quality),
        seed=seed,
        vae_tiling=profile.vae_tiling,
        scheduler=extras.scheduler or profile.scheduler or None,
        guidance=extras.guidance if extras.guidance is not None else profile.guidance,
        flow_shift=extras.flow_shift if extras.flow_shift is not None else profile.flow_shift,
        cache_mode=cache_mode,
        init_image=init,
        strength=strength if init is not None else None,
        mask_image=sd_mask,
        ref_images=refs or None,
        preview_method=preview_method if previews else None,
    )
    return SDJob(args, images=images, partial_images=partial_images if previews else 0)
