"""A model folder: the files of one model as their publishers name them, plus an optional
``model.toml``. The folder name is the model id.

    models/
      sd-turbo/                     # single-file checkpoint (+ optional TAESD / VAE)
        sd_turbo.safetensors
        sd_turbo-q8_0.gguf          # optional second format; the node picks one
      flux1-schnell/                # split model: diffusion model + encoders + autoencoder
        flux1-schnell.safetensors
        ae.safetensors
        clip_l.safetensors
        t5xxl_fp16.safetensors
        loras/                      # optional: this model's LoRAs (name = file stem)
      loras/                        # the node's LoRAs when no lora_dir is configured

Each weights file (``.safetensors``, ``.gguf``, ``.ckpt``, in the folder or one sub-folder down)
is classified by its tensor names (``tensor_index``): checkpoint, diffusion model, clip_l,
clip_g, t5xxl, llm, llm_vision, vae, taesd, LoRA. The family comes from the main weights
(``families``), and so do the defaults; a missing component is the folder's problem, reported
with what to add. A file that is not a model (encoder, autoencoder, LoRA) is never one.

``model.toml`` (all keys optional, unknown keys refused):

- sampling: ``steps``, ``cfg_scale``, ``guidance``, ``flow_shift``, ``sampler``, ``scheduler``,
  ``native_size`` ("WxH"), ``negative_prompt``, ``description``;
- files (names relative to the folder, never outside it): ``weights`` (force one main weights
  file), ``model`` (a single-file checkpoint), ``diffusion_model``, ``clip_l``, ``clip_g``,
  ``t5xxl``, ``llm``, ``llm_vision``, ``vae``, ``taesd``; ``family`` overrides detection;
- engine: ``flash_attn``, ``diffusion_flash_attn``, ``offload_params_to_cpu``,
  ``keep_clip_on_cpu``, ``keep_vae_on_cpu``, ``vae_tiling``, ``wtype``, ``cache_mode``,
  ``preview_method``, ``qwen_image_zero_cond_t``.

When a folder holds both safetensors and GGUF main weights, the node chooses: with an
accelerator and enough free memory for the full-precision file it takes safetensors (canonical
format, best quality); on CPU, or when memory is short, it takes the smallest GGUF (quantised:
less memory and faster on CPU). ``weights_preference`` (node setting) can force either.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import msgspec

from llmlb_node.stable_diffusion.models.families import (
    SD1,
    Family,
    FamilyName,
    detect_family,
    family_by_name,
    resolve_family,
)
from llmlb_node.stable_diffusion.models.tensor_index import FORMAT_BY_SUFFIX, FileRole, Role, classify_file
from llmlb_plugins.images.protocol import CfgScale, FlowShift, Guidance, Sampler, Scheduler, Steps, parse_size

log = logging.getLogger("llmlb.node.sd")

WEIGHT_SUFFIXES = tuple(FORMAT_BY_SUFFIX)
PROFILE_FILE = "model.toml"
LORA_DIR = "loras"
COMPONENTS: tuple[str, ...] = ("clip_l", "clip_g", "t5xxl", "llm", "llm_vision", "vae", "taesd")
MAIN_ROLES: frozenset[Role] = frozenset({"checkpoint", "diffusion"})
_LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

# The binding's names (stable_diffusion.py: PREVIEW_MAP, SD_CACHE_MODE_MAP, GGML_TYPE_MAP).
PreviewMethod = Literal["auto", "none", "proj", "tae", "vae"]
CacheMode = Literal["disabled", "easycache", "ucache", "dbcache", "taylorseer", "cachedit", "spectrum"]
WType = Literal[
    "default", "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k",
    "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "iq1_m",
    "tq1_0", "tq2_0", "mxfp4",
]  # fmt: skip
NativeSize = Annotated[str, msgspec.Meta(pattern=r"^\d{2,5}x\d{2,5}$")]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class ModelOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``model.toml`` says that the profile keeps as written (:class:`ModelToml`,
    :class:`ModelProfile`). File keys hold names relative to the folder (``None``: not used);
    ``weights``/``model``/``diffusion_model`` are what model.toml forced (``None``: chosen by the
    node)."""

    description: str = ""
    negative_prompt: str = ""
    weights: FileName | None = None
    model: FileName | None = None
    diffusion_model: FileName | None = None
    clip_l: FileName | None = None
    clip_g: FileName | None = None
    t5xxl: FileName | None = None
    llm: FileName | None = None
    llm_vision: FileName | None = None
    vae: FileName | None = None
    taesd: FileName | None = None
    flash_attn: bool = False
    diffusion_flash_attn: bool = False
    offload_params_to_cpu: bool = False
    keep_clip_on_cpu: bool = False
    keep_vae_on_cpu: bool = False
    vae_tiling: bool = False
    wtype: WType = "default"
    cache_mode: CacheMode = "disabled"


class ModelToml(ModelOptions, kw_only=True, forbid_unknown_fields=True):
    """``model.toml`` as the operator wrote it: ``None`` = the family's default / detection."""

    family: FamilyName | None = None
    steps: Steps | None = None
    cfg_scale: CfgScale | None = None
    guidance: Guidance | None = None
    flow_shift: FlowShift | None = None
    sampler: Sampler | None = None
    scheduler: Scheduler | None = None
    native_size: NativeSize | None = None
    preview_method: PreviewMethod = "auto"
    # sd.cpp's docs/qwen_image_edit.md: Qwen-Image-Edit-2511 needs it (default: on for a
    # diffusion model whose name holds "2511").
    qwen_image_zero_cond_t: bool | None = None


class ModelProfile(ModelOptions, kw_only=True, forbid_unknown_fields=True):
    """The resolved profile: model.toml over the family's defaults, every field set (the
    components' files as found, named relative to the folder)."""

    family: str = "sd1"
    steps: Steps = 20
    cfg_scale: CfgScale = 7.0
    guidance: Guidance | None = None
    flow_shift: FlowShift | None = None
    sampler: Sampler = "euler_a"
    scheduler: Scheduler | None = None
    native_size: NativeSize = "512x512"
    preview_method: PreviewMethod = "proj"
    qwen_image_zero_cond_t: bool = False

    @property
    def native_wh(self) -> tuple[int, int]:
        return parse_size(self.native_size)


class FolderProblem(ValueError):
    """Why a folder is not served: one line that says what to do."""


@dataclass(frozen=True)
class WeightsChoice:
    path: Path
    reason: str


@dataclass(frozen=True)
class ModelFolder:
    id: str
    path: Path
    profile: ModelProfile
    # The main weights (one model, possibly in several formats; choose_weights picks one).
    weights: tuple[Path, ...]
    family: Family = SD1
    # Binding constructor argument -> file: clip_l_path, clip_g_path, t5xxl_path, llm_path,
    # llm_vision_path, vae_path, taesd_path.
    components: Mapping[str, Path] = field(default_factory=dict)
    # LoRA name (file stem) -> file: the folder's own, its loras/ and the node's LoRA dir.
    loras: Mapping[str, Path] = field(default_factory=dict)
    # Main weights file -> "model_path" (single-file checkpoint) or "diffusion_model_path".
    weights_args: Mapping[Path, str] = field(default_factory=dict)
    # Components inside the checkpoint (clip_l, clip_g, t5xxl, llm, vae).
    embedded: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()

    def load_kwargs(self, weights: Path) -> dict[str, Any]:
        """The binding's ``StableDiffusion(...)`` arguments for ``weights`` (not ``n_threads``
        or ``verbose``: the engine adds those)."""
        p = self.profile
        kwargs: dict[str, Any] = {self.weights_args.get(weights, "model_path"): str(weights)}
        kwargs.update({arg: str(path) for arg, path in self.components.items()})
        has_vae = "vae_path" in self.components or "vae" in self.embedded
        kwargs.update(
            flash_attn=p.flash_attn,
            diffusion_flash_attn=p.diffusion_flash_attn,
            offload_params_to_cpu=p.offload_params_to_cpu,
            keep_clip_on_cpu=p.keep_clip_on_cpu,
            keep_vae_on_cpu=p.keep_vae_on_cpu,
            wtype=p.wtype,
            vae_decode_only=False,  # edits and references encode images
            # With a real VAE, TAESD only draws previews; without one it decodes (SD demo).
            tae_preview_only="taesd_path" in self.components and has_vae,
        )
        if p.qwen_image_zero_cond_t:
            kwargs["qwen_image_zero_cond_t"] = True
        return kwargs

    def aux(self, name: str | None) -> Path | None:
        """A file of the folder named by the profile (kept for callers of the one-file layout)."""
        if not name:
            return None
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"{self.id}: profile names {name!r}, which is not in {self.path}")
        return path

    @property
    def summary(self) -> str:
        """One log line: what the node serves from this folder."""
        main = ", ".join(
            f"{'checkpoint' if self.weights_args.get(w) == 'model_path' else 'diffusion'} {self._rel(w)}"
            for w in self.weights
        )
        family = self.family
        described = f"{family.label}, {family.variant}" if family.variant else family.label
        parts = [f"model {self.id}: family {family.name} ({described})", main]
        parts += [f"{arg.removesuffix('_path')} {self._rel(p)}" for arg, p in self.components.items()]
        if self.embedded:
            parts.append("inside: " + "+".join(sorted(self.embedded)))
        if self.loras:
            parts.append(f"{len(self.loras)} LoRA(s)")
        line = ", ".join(parts)
        return line + ("; " + "; ".join(self.notes) if self.notes else "")

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.path))
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class ScanResult:
    models: list[ModelFolder]
    # Folder name -> why it is not served.
    problems: dict[str, str]


# --------------------------------------------------------------------------- model.toml


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_model_toml(folder: Path) -> ModelToml:
    path = folder / PROFILE_FILE
    if not path.is_file():
        return ModelToml()
    try:
        toml = msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), ModelToml)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise FolderProblem(f"{path}: {_one_line(str(exc))}") from None
    for key in ("weights", "model", "diffusion_model", *COMPONENTS):
        _inside(folder, key, getattr(toml, key))
    return toml


def _inside(folder: Path, key: str, name: str | None) -> Path | None:
    """The file ``name`` names in ``folder``, refusing names that leave it."""
    if name is None:
        return None
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or ":" in name or "\x00" in name:
        raise FolderProblem(
            f"{folder / PROFILE_FILE}: {key} = {name!r}: name a file inside the model folder "
            "(no '..', not an absolute path)"
        )
    return folder.joinpath(*pure.parts)


# --------------------------------------------------------------------------- files


def _weights_in(folder: Path) -> list[Path]:
    """Weights files in ``folder`` and one sub-folder down (not ``loras/``, not hidden)."""
    found: list[Path] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in WEIGHT_SUFFIXES:
            found.append(entry)
        elif entry.is_dir() and entry.name != LORA_DIR:
            try:
                found += sorted(
                    p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES
                )
            except OSError:
                continue
    return found


def list_loras(directory: Path | None) -> dict[str, Path]:
    """LoRA files of ``directory`` by name (file stem); names that could be paths are skipped."""
    if directory is None or not directory.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and _LORA_NAME.match(p.stem)
    }


def _pick(candidates: list[FileRole], role: str, family: Family) -> tuple[FileRole | None, str]:
    """One file for ``role`` among several: the autoencoder whose latents fit the family."""
    if not candidates:
        return None, ""
    fitting = candidates
    if role in ("vae", "taesd"):
        fitting = [c for c in candidates if not c.latents or c.latents == family.latents] or candidates
    chosen = sorted(fitting, key=lambda c: (c.path.suffix != ".safetensors", c.path.name))[0]
    note = ""
    if len(candidates) > 1:
        names = ", ".join(c.path.name for c in candidates)
        note = (
            f"several {role} files ({names}): using {chosen.path.name} (name one in model.toml: {role} = ...)"
        )
    return chosen, note


def _main_family(main: list[FileRole], roles: list[FileRole], toml: ModelToml) -> Family:
    clip_g = any(r.role == "clip_g" for r in roles) or toml.clip_g is not None
    widths = [r.text_width for r in roles if r.role in ("clip_l", "clip_g") and r.text_width]
    detected: dict[str, tuple[Family, FileRole]] = {}
    for file in main:
        if file.index is None or file.index.format == "ckpt":
            continue
        width = file.text_width or (768 if any(w == 768 for w in widths) else 0)
        found = detect_family(file.index, text_width=width, has_clip_g=clip_g)
        if found is None:
            raise FolderProblem(
                f"{file.path.name}: a diffusion model stable-diffusion.cpp does not recognise "
                "(no tensor names of a family it knows)"
            )
        family = resolve_family(found[0], file.path.name, found[1])
        detected.setdefault(family.title, (family, file))
    if len(detected) > 1:
        listing = ", ".join(f"{f.path.name} ({fam.title})" for fam, f in detected.values())
        raise FolderProblem(
            f"several different models ({listing}): keep one model per folder, or name it in "
            f"model.toml (weights = ...)"
        )
    if toml.family is not None:
        return resolve_family(toml.family, main[0].path.name)
    if detected:
        return next(iter(detected.values()))[0]
    return resolve_family(family_by_name(main[0].path.name), main[0].path.name)


def _named(folder: Path, key: str, name: str, roles: dict[Path, FileRole]) -> FileRole:
    path = _inside(folder, key, name)
    assert path is not None
    if not path.is_file():
        raise FolderProblem(f"{folder / PROFILE_FILE}: {key} = {name!r}: no such file in {folder}")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise FolderProblem(
            f"{folder / PROFILE_FILE}: {key} = {name!r}: not a .safetensors, .gguf or .ckpt file"
        )
    file = roles.get(path) or classify_file(path)
    if file.detail.startswith("unreadable"):
        raise FolderProblem(f"{folder / PROFILE_FILE}: {key} = {name!r}: {file.detail}")
    return file


def _main_weights(
    folder: Path, toml: ModelToml, roles: dict[Path, FileRole]
) -> tuple[list[FileRole], str | None]:
    """The main weights files and, when model.toml forces it, their binding argument."""
    keys = [k for k in ("weights", "model", "diffusion_model") if getattr(toml, k) is not None]
    if len(keys) > 1:
        raise FolderProblem(f"{folder / PROFILE_FILE}: set only one of weights, model, diffusion_model")
    if not keys:
        main = [r for r in roles.values() if r.role in MAIN_ROLES]
        if not main:
            raise FolderProblem(_no_model_reason(list(roles.values())))
        return main, None
    key = keys[0]
    name = getattr(toml, key)
    file = _named(folder, key, name, roles)
    if key == "weights" and file.role not in MAIN_ROLES:
        raise FolderProblem(
            f"{folder / PROFILE_FILE}: weights = {name!r}: {file.detail or file.role}, not a model"
        )
    return [file], {"model": "model_path", "diffusion_model": "diffusion_model_path"}.get(key)


def _components(
    folder: Path, toml: ModelToml, roles: dict[Path, FileRole], family: Family
) -> tuple[dict[str, FileRole], list[str]]:
    """Role -> file for the components the family uses: model.toml's, else found by role."""
    chosen: dict[str, FileRole] = {}
    notes: list[str] = []
    for role in COMPONENTS:
        name = getattr(toml, role)
        if name is not None:
            file = _named(folder, role, name, roles)
            if file.role not in ("unknown", role) and file.index is not None and file.index.format != "ckpt":
                raise FolderProblem(
                    f"{folder / PROFILE_FILE}: {role} = {name!r} is a {file.role} file, not {role}"
                )
            chosen[role] = file
        elif role in family.uses:
            picked, note = _pick([r for r in roles.values() if r.role == role], role, family)
            if picked is not None:
                chosen[role] = picked
            if note:
                notes.append(note)
    taesd = chosen.get("taesd")
    if taesd is not None and taesd.latents and taesd.latents != family.latents and toml.taesd is None:
        notes.append(f"{taesd.path.name} ({taesd.latents}) does not fit {family.latents} latents: not used")
        del chosen["taesd"]
    return chosen, notes


def _check_needs(
    family: Family, main: list[FileRole], chosen: dict[str, FileRole], roles: dict[Path, FileRole]
) -> list[str]:
    """Raise for a missing required component; notes for missing recommended ones."""
    if any(f.index is None or f.index.format == "ckpt" for f in main):
        return []  # what a .ckpt holds is unknown: sd.cpp will say
    have = set(chosen).union(*(f.contains for f in main))
    unreadable = [f"{f.path.name} is {f.detail}" for f in roles.values() if f.detail.startswith("unreadable")]
    for need in family.needs:
        if not have.intersection(need.roles):
            also = f" ({'; '.join(unreadable)})" if unreadable else ""
            raise FolderProblem(f"{family.title}: {need.what}: {need.fix}{also}")
    vae = chosen.get("vae")
    if vae is not None and vae.latents and vae.latents != family.latents:
        fix = next((n.fix for n in family.needs if "vae" in n.roles), "add the family's autoencoder")
        raise FolderProblem(
            f"{family.title}: {vae.path.name} is a {vae.latents} autoencoder, the family needs "
            f"{family.latents}: {fix}"
        )
    return [
        f"no {'/'.join(r)}: {what} recommended" for r, what in family.recommends if not have.intersection(r)
    ]


def inspect_folder(folder: Path, *, lora_dir: Path | None = None) -> ModelFolder:
    """The model this folder serves; ``FolderProblem`` says why it serves none."""
    toml = read_model_toml(folder)
    roles = {p: classify_file(p) for p in _weights_in(folder)}
    main, forced_arg = _main_weights(folder, toml, roles)
    family = _main_family(main, list(roles.values()), toml)
    if not family.generates_images:
        raise FolderProblem(f"{family.label} is a video model family; this node serves images only")
    chosen, notes = _components(folder, toml, roles, family)
    notes += _check_needs(family, main, chosen, roles)
    main_paths = {f.path for f in main}
    notes += [
        f"{f.path.name} ignored: {f.detail}"
        for f in roles.values()
        if f.role == "unknown" and f.path not in main_paths and f.detail
    ]
    loras = list_loras(lora_dir)
    loras.update(
        {r.path.stem: r.path for r in roles.values() if r.role == "lora" and _LORA_NAME.match(r.path.stem)}
    )
    loras.update(list_loras(folder / LORA_DIR))
    components = {f"{role}_path": file.path for role, file in chosen.items()}
    return ModelFolder(
        id=folder.name,
        path=folder,
        profile=_resolve_profile(toml, family, folder, components, main[0].path),
        weights=tuple(f.path for f in main),
        family=family,
        components=components,
        loras=loras,
        weights_args={
            f.path: forced_arg or ("model_path" if f.role == "checkpoint" else "diffusion_model_path")
            for f in main
        },
        embedded=frozenset().union(*(f.contains for f in main)),
        notes=tuple(notes),
    )


def _no_model_reason(files: list[FileRole]) -> str:
    if not files:
        return "no weights files (.safetensors, .gguf, .ckpt)"
    unreadable = [f for f in files if f.detail.startswith("unreadable")]
    if unreadable:
        return "; ".join(f"{f.path.name}: {f.detail}" for f in unreadable)
    if all(f.role == "lora" for f in files):
        return f"holds only LoRAs: put them in {LORA_DIR}/ (of the models folder or of a model folder)"
    found = ", ".join(f"{f.path.name} ({f.role})" for f in files)
    return f"no diffusion model, only {found}: add the model's weights"


def _resolve_profile(
    toml: ModelToml, family: Family, folder: Path, components: dict[str, Path], main: Path
) -> ModelProfile:
    def rel(arg: str) -> str | None:
        path = components.get(arg)
        return str(path.relative_to(folder)) if path is not None else None

    preview = toml.preview_method
    if preview == "auto":
        preview = "tae" if "taesd_path" in components else "proj"
    zero_cond = toml.qwen_image_zero_cond_t
    if zero_cond is None:
        zero_cond = family.name == "qwen_image_edit" and "2511" in main.name
    # What model.toml says as written; the files as found, named relative to the folder.
    as_written = {name: getattr(toml, name) for name in ModelOptions.__struct_fields__}
    as_written["weights"] = toml.weights or toml.model or toml.diffusion_model
    as_written.update({name: rel(f"{name}_path") for name in COMPONENTS})
    return ModelProfile(
        **as_written,
        family=family.name,
        steps=toml.steps if toml.steps is not None else family.steps,
        cfg_scale=toml.cfg_scale if toml.cfg_scale is not None else family.cfg_scale,
        guidance=toml.guidance if toml.guidance is not None else family.guidance,
        flow_shift=toml.flow_shift if toml.flow_shift is not None else family.flow_shift,
        sampler=toml.sampler or family.sampler,
        scheduler=toml.scheduler or family.scheduler,
        native_size=toml.native_size or family.native_size,
        preview_method=preview,
        qwen_image_zero_cond_t=zero_cond,
    )


# --------------------------------------------------------------------------- scanning


def scan_models(models_dir: Path, *, lora_dir: Path | None = None) -> ScanResult:
    """Every model folder of ``models_dir``; the others with the reason they are not served.

    ``lora_dir``: the node's LoRA folder (default: ``models_dir/loras`` when it exists), whose
    LoRAs every model gets; it is never a model itself. Nothing is logged here: the runtime
    logs ``summary`` lines and problems when they change (``log_scan_changes``)."""
    if not models_dir.is_dir():
        return ScanResult([], {})
    default_loras = models_dir / LORA_DIR
    if lora_dir is None and default_loras.is_dir():
        lora_dir = default_loras
    skip = {default_loras.resolve()} | ({lora_dir.resolve()} if lora_dir is not None else set())
    models: list[ModelFolder] = []
    problems: dict[str, str] = {}
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.resolve() in skip:
            continue
        try:
            models.append(inspect_folder(folder, lora_dir=lora_dir))
        except FolderProblem as exc:
            problems[folder.name] = str(exc)
        except OSError as exc:
            problems[folder.name] = f"cannot read: {exc.strerror or exc}"
    return ScanResult(models, problems)


def log_scan_changes(previous: ScanResult | None, current: ScanResult) -> None:
    """Log each model's summary and each problem once: when it first appears or changes."""
    before_models = {m.id: m.summary for m in previous.models} if previous else {}
    before_problems = previous.problems if previous else {}
    for model in current.models:
        if before_models.get(model.id) != model.summary:
            log.info("%s", model.summary)
    for name, reason in current.problems.items():
        if before_problems.get(name) != reason:
            log.error("model folder %s is not served: %s", name, reason)


# --------------------------------------------------------------------------- compatibility


def read_profile(folder: Path) -> ModelProfile:
    """The resolved profile of ``folder``; ``ValueError`` (``FolderProblem``) when it serves no
    model."""
    return inspect_folder(folder).profile


def weight_files(folder: Path, profile: ModelProfile | None = None) -> tuple[Path, ...]:
    """The main weights files of ``folder`` (not its encoders, autoencoders or LoRAs)."""
    return inspect_folder(folder).weights


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
