"""A model folder: weights, optional TAESD/VAE files and an optional ``model.toml`` profile.

Layout (one folder per model, the folder name is the model id)::

    models/
      sd-turbo/
        sd_turbo.safetensors      # weights: .safetensors, .gguf or .ckpt
        sd_turbo-q8_0.gguf        # optional second format; the node picks one
        model.toml                # optional profile (below)

Profile keys (all optional): ``steps``, ``cfg_scale``, ``sampler``, ``scheduler``,
``native_size`` ("WxH"), ``negative_prompt``, ``taesd`` / ``vae`` (file names in the folder),
``description``, ``weights`` (force one weights file).

When a folder holds both safetensors and GGUF, the node chooses: with an accelerator and
enough free memory for the full-precision file it takes safetensors (canonical format, best
quality); on CPU, or when memory is short, it takes the smallest GGUF (quantised: less memory
and faster on CPU). ``weights_preference`` (node setting) can force either.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from llmlb_plugins.images.protocol import Sampler, Scheduler, parse_size

log = logging.getLogger("llmlb.node.sd")

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ckpt")
PROFILE_FILE = "model.toml"
# Files that are never the main weights.
AUX_MARKERS = ("taesd", "vae", "lora", "controlnet", "upscal", "clip")


class ModelProfile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    description: str = ""
    steps: Annotated[int, msgspec.Meta(ge=1, le=150)] = 20
    cfg_scale: Annotated[float, msgspec.Meta(ge=0.0, le=30.0)] = 7.0
    sampler: Sampler = "euler_a"
    scheduler: Scheduler | None = None
    native_size: Annotated[str, msgspec.Meta(pattern=r"^\d{2,5}x\d{2,5}$")] = "512x512"
    negative_prompt: str = ""
    taesd: str | None = None
    vae: str | None = None
    weights: str | None = None

    @property
    def native_wh(self) -> tuple[int, int]:
        return parse_size(self.native_size)


@dataclass(frozen=True)
class WeightsChoice:
    path: Path
    reason: str


@dataclass(frozen=True)
class ModelFolder:
    id: str
    path: Path
    profile: ModelProfile
    weights: tuple[Path, ...]

    def aux(self, name: str | None) -> Path | None:
        if not name:
            return None
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"{self.id}: profile names {name!r}, which is not in {self.path}")
        return path


def read_profile(folder: Path) -> ModelProfile:
    path = folder / PROFILE_FILE
    if not path.is_file():
        return ModelProfile()
    try:
        return msgspec.convert(tomllib.loads(path.read_text()), ModelProfile)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def weight_files(folder: Path, profile: ModelProfile) -> tuple[Path, ...]:
    if profile.weights:
        return (folder / profile.weights,)
    aux = {profile.taesd, profile.vae}
    return tuple(
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.suffix in WEIGHT_SUFFIXES
            and p.name not in aux
            and not any(marker in p.stem.lower() for marker in AUX_MARKERS)
        )
    )


def scan_models(models_dir: Path) -> list[ModelFolder]:
    """Every sub-folder with weights; a folder with a broken profile is skipped with an error."""
    if not models_dir.is_dir():
        return []
    found = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        try:
            profile = read_profile(folder)
            weights = weight_files(folder, profile)
        except (ValueError, OSError) as exc:
            log.error("skipping model folder %s: %s", folder, exc)
            continue
        if weights:
            found.append(ModelFolder(id=folder.name, path=folder, profile=profile, weights=weights))
    return found


def choose_weights(
    folder: ModelFolder,
    *,
    accelerator: bool,
    free_memory_bytes: int | None,
    preference: str = "auto",
) -> WeightsChoice:
    """Pick the weights file to load from what the folder holds and what this machine has."""
    by_kind: dict[str, list[Path]] = {}
    for path in folder.weights:
        by_kind.setdefault("gguf" if path.suffix == ".gguf" else "full", []).append(path)
    full = by_kind.get("full", [])
    gguf = sorted(by_kind.get("gguf", []), key=lambda p: p.stat().st_size)
    if not full or not gguf:
        only = (full or gguf)[0]
        return WeightsChoice(only, f"only {only.suffix} weights present")
    if preference == "safetensors":
        return WeightsChoice(full[0], "forced by weights_preference=safetensors")
    if preference == "gguf":
        return WeightsChoice(gguf[0], "forced by weights_preference=gguf")
    full_size = full[0].stat().st_size
    # Loading needs roughly the file size plus working memory for activations.
    fits = free_memory_bytes is None or free_memory_bytes > full_size * 1.5
    if accelerator and fits:
        return WeightsChoice(full[0], "accelerator present and memory suffices: full precision")
    if not accelerator:
        return WeightsChoice(gguf[0], "no accelerator: quantised GGUF is smaller and faster on CPU")
    return WeightsChoice(
        gguf[0],
        f"free memory {free_memory_bytes or 0:,} B is short of {int(full_size * 1.5):,} B "
        "for full precision: quantised GGUF",
    )
