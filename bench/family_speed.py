"""Engine speed per model family: ``python -m bench.node_bench --family sd1|flux``.

stable-diffusion.cpp in this process, loaded exactly as the node loads the model folder
(``inspect_folder(...).load_kwargs(weights)``: the same files, engine options and defaults),
reports for each size of ``--sizes``:

- the load time (constructor, once);
- seconds per image (``generate_image``, one image: text encoding + sampling + decoding);
- the sampling seconds (all steps) of the best run, and seconds per step and steps per second
  from the fastest step of all runs, timed with the progress callback (sd.cpp reports each
  step when it ends, its preview included);
- with ``--preview none,proj,tae,vae``: each preview method's fastest step, and its cost per
  step over ``none``.

Each number is the best of ``--reps`` runs, or of all their steps (a shared machine only ever
makes a run slower, and a quiet spell as long as one step comes more often than one as long as
a whole run), after one warm-up image; per size the repetitions go round the preview methods,
so that a busy spell hits them alike.

Models: ``--family sd1`` is the synthetic SD1 tiny U-Net (``.cache/test-models/demo``),
``--family flux`` the synthetic split FLUX.1 folder (``.cache/test-flux-models/
flux-schnell-tiny``), written if missing; real weights: ``--models-dir DIR --model NAME`` (a
node's models dir and a folder in it; ``--family`` then only checks the detected family)::

    .venv/bin/python -m bench.node_bench --family flux --models-dir /models --model flux1-schnell \\
        --sizes 512,768,1024 --steps 4 --preview none,proj,tae,vae

Preview methods in sd.cpp 0.4.7: ``proj`` projects the latents to RGB (latent-sized frames);
``tae`` and ``vae`` both decode with the preview TAE when the context has one (a TAESD file with
``tae_preview_only``), else with the model's VAE. So the ``vae`` row is measured on a second
context loaded without the TAESD file; a model whose only autoencoder is a TAESD (the SD1
demo) decodes ``vae`` previews with it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench._common import REPO

PROMPT = "a lighthouse on a rocky cliff at sunset, oil painting"
SEED = 1234
PRESETS: dict[str, Path] = {
    "sd1": REPO / ".cache" / "test-models" / "demo",
    "flux": REPO / ".cache" / "test-flux-models" / "flux-schnell-tiny",
}
PREVIEWS = ("none", "proj", "tae", "vae")


class SpeedError(RuntimeError):
    """The model folder or the options cannot be benchmarked."""


@dataclass
class SpeedModel:
    """What is loaded and how an image is asked for."""

    folder: Path
    family: str
    load_kwargs: dict[str, Any]
    generate_kwargs: dict[str, Any]
    steps: int

    @property
    def has_tae(self) -> bool:
        return "taesd_path" in self.load_kwargs

    @property
    def has_vae(self) -> bool:
        return bool(self.load_kwargs.get("tae_preview_only"))  # a VAE besides the TAESD

    def without_tae(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.load_kwargs.items() if k != "taesd_path"}
        kwargs["tae_preview_only"] = False
        return kwargs


@dataclass
class ImageTiming:
    total_s: float
    sampling_s: float
    fastest_step_s: float  # the shortest step: its own preview included
    frames: int

    def best(self, other: ImageTiming | None) -> ImageTiming:
        if other is None:
            return self
        return ImageTiming(
            min(self.total_s, other.total_s),
            min(self.sampling_s, other.sampling_s),
            min(self.fastest_step_s, other.fastest_step_s),
            self.frames,
        )


@dataclass
class SizeResult:
    size: str
    image_s: float = float("inf")
    sampling_s: float = float("inf")
    step_s: float = float("inf")  # the fastest step of all runs
    # Seconds of the fastest step with each preview method, and the cost per step over "none"
    # (of the same context).
    preview_step_s: dict[str, float] = field(default_factory=dict)
    preview_cost_s: dict[str, float] = field(default_factory=dict)


def ensure_preset(family: str) -> Path:
    from llmlb_node.stable_diffusion.tools import demo_checkpoint, demo_flux

    folder = PRESETS[family]
    if family == "sd1" and not demo_checkpoint.demo_model_is_complete(folder):
        print(f"writing the synthetic SD1 checkpoint into {folder} (~850 MB, once) ...", flush=True)
        demo_checkpoint.write_demo_model(folder)
    if family == "flux" and not demo_flux.demo_flux_is_complete(folder):
        print(f"writing the synthetic FLUX.1 folder into {folder} (~431 MB, once) ...", flush=True)
        demo_flux.write_demo_flux(folder)
    return folder


def resolve_model(args: argparse.Namespace) -> SpeedModel:
    """The model folder the node would serve, with its load arguments and resolved profile."""
    from llmlb_node.stable_diffusion.engine.engine import free_memory_bytes, has_accelerator
    from llmlb_node.stable_diffusion.models.model_folder import FolderProblem, choose_weights, inspect_folder

    if args.model:
        folder = Path(args.models_dir).expanduser() / args.model if args.models_dir else Path(args.model)
    elif args.family:
        folder = ensure_preset(args.family)
    else:
        raise SpeedError("--family sd1|flux, or --models-dir DIR --model NAME")
    if not folder.is_dir():
        raise SpeedError(f"{folder} is not a model folder")
    try:
        found = inspect_folder(folder)
    except FolderProblem as exc:
        raise SpeedError(f"{folder} is not served by a node: {exc}") from exc
    if args.family and found.family.name != args.family:
        print(f"note: {folder.name} is family {found.family.name}, not {args.family}", flush=True)
    weights = choose_weights(
        found, accelerator=has_accelerator(), free_memory_bytes=free_memory_bytes(), preference=args.weights
    ).path
    p = found.profile
    generate: dict[str, Any] = {
        "cfg_scale": p.cfg_scale if args.cfg is None else args.cfg,
        "sample_method": p.sampler if args.sampler is None else args.sampler,
        "negative_prompt": p.negative_prompt,
    }
    if p.scheduler:
        generate["scheduler"] = p.scheduler
    if p.guidance is not None:
        generate["guidance"] = p.guidance
    if p.flow_shift is not None:
        generate["flow_shift"] = p.flow_shift
    if p.cache_mode != "disabled":
        generate["cache_mode"] = p.cache_mode
    if p.vae_tiling:
        generate["vae_tiling"] = True
    return SpeedModel(
        folder=folder,
        family=found.family.name,
        load_kwargs=found.load_kwargs(weights),
        generate_kwargs=generate,
        steps=args.steps or p.steps,
    )


def clear_callbacks() -> None:
    """sd.cpp keeps both callbacks process-wide and frees them when the call returns: the next
    call without them would crash."""
    from stable_diffusion_cpp import stable_diffusion_cpp as low

    low.sd_set_progress_callback(None, None)
    low.sd_set_preview_callback(None, 0, 1, True, False, None)


@contextmanager
def loaded(kwargs: dict[str, Any], threads: int) -> Iterator[tuple[Any, float]]:
    import stable_diffusion_cpp as sdc

    started = time.perf_counter()
    sd = sdc.StableDiffusion(**kwargs, n_threads=threads, verbose=False)
    load_s = time.perf_counter() - started
    try:
        yield sd, load_s
    finally:
        sd.close()
        del sd
        gc.collect()


def time_image(sd: Any, model: SpeedModel, width: int, height: int, preview: str) -> ImageTiming:
    marks: list[float] = []
    frames = [0]

    def on_progress(step: int, steps: int, seconds: float) -> None:
        marks.append(time.perf_counter())

    def on_preview(step: int, images: list[Any], is_noisy: bool) -> None:
        frames[0] += len(images)

    extra: dict[str, Any] = {}
    if preview != "none":
        extra = {"preview_method": preview, "preview_callback": on_preview}
    started = time.perf_counter()
    try:
        images = sd.generate_image(
            prompt=PROMPT,
            width=width,
            height=height,
            sample_steps=model.steps,
            seed=SEED,
            progress_callback=on_progress,
            **model.generate_kwargs,
            **extra,
        )
    finally:
        clear_callbacks()
    total = time.perf_counter() - started
    if len(images) != 1 or len(marks) < 2:
        raise SpeedError(f"generate_image gave {len(images)} image(s), {len(marks)} progress calls")
    fastest = min(b - a for a, b in pairwise(marks))
    return ImageTiming(total, marks[-1] - marks[0], fastest, frames[0])


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        try:
            sizes.append((int(width), int(height or width)))
        except ValueError:
            raise SpeedError(f"--sizes: comma-separated N or WxH, not {text!r}") from None
    if not sizes or any(w < 64 or h < 64 or w % 64 or h % 64 for w, h in sizes):
        raise SpeedError("--sizes: multiples of 64 (e.g. 64,128,256 or 512x768)")
    return sizes


def parse_previews(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(PREVIEWS))
    if unknown or not methods:
        raise SpeedError(f"--preview: comma-separated of {', '.join(PREVIEWS)}, not {text!r}")
    return ["none"] + [m for m in PREVIEWS[1:] if m in methods]  # "none" is the baseline


def measure(model: SpeedModel, args: argparse.Namespace) -> tuple[dict[str, float], list[SizeResult]]:
    """Per size, the repetitions go round the preview methods (none, proj, ...) so that a busy
    spell of the machine hits them alike; each cell keeps its best run."""
    sizes = parse_sizes(args.sizes)
    previews = parse_previews(args.preview)
    reps = args.reps or (1 if args.quick else 3)
    threads = args.threads or (os.cpu_count() or 1)
    results = [SizeResult(f"{w}x{h}") for w, h in sizes]
    loads: dict[str, float] = {}
    # vae previews on a model with both autoencoders: sd.cpp would draw them with the TAE, so
    # they run on a context without it, against that context's own "none".
    separate_vae = "vae" in previews and model.has_tae and model.has_vae
    contexts = [("node", model.load_kwargs, [m for m in previews if not (separate_vae and m == "vae")])]
    if separate_vae:
        contexts.append(("without TAESD, for vae previews", model.without_tae(), ["none", "vae"]))
    for label, kwargs, methods in contexts:
        with loaded(kwargs, threads) as (sd, load_s):
            loads[label] = load_s
            print(f"loaded ({label}) in {load_s:.2f}s; warm-up ...", flush=True)
            time_image(sd, model, *sizes[0], "none")
            for (width, height), result in zip(sizes, results, strict=True):
                best: dict[str, ImageTiming] = {}
                for rep in range(reps):
                    for method in methods:
                        t = time_image(sd, model, width, height, method)
                        print(
                            f"  {result.size} rep {rep + 1} preview {method:4}: {t.total_s:7.3f} s/image, "
                            f"sampling {t.sampling_s:7.3f} s, {t.frames} frame(s)",
                            flush=True,
                        )
                        best[method] = t.best(best.get(method))
                if label == "node":
                    result.image_s, result.sampling_s = best["none"].total_s, best["none"].sampling_s
                    result.step_s = best["none"].fastest_step_s
                for method in methods:
                    if method != "none" or label == "node":
                        per_step = best[method].fastest_step_s
                        result.preview_step_s[method] = per_step
                        result.preview_cost_s[method] = per_step - best["none"].fastest_step_s
    return loads, results


def print_table(
    model: SpeedModel, args: argparse.Namespace, loads: dict[str, float], rows: list[SizeResult]
) -> None:
    threads = args.threads or (os.cpu_count() or 1)
    settings = ", ".join(f"{k} {v}" for k, v in model.generate_kwargs.items() if k != "negative_prompt")
    reps = args.reps or (1 if args.quick else 3)
    print(f"\n{model.folder.name} (family {model.family}), {model.steps} steps, {settings}")
    print(f"{threads} thread(s), best of {reps} run(s) per cell")
    print("load: " + ", ".join(f"{label} {s:.2f} s" for label, s in loads.items()))
    print("\n| size | s/image | sampling s | s/step | steps/s | outside sampling s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.size} | {r.image_s:.2f} | {r.sampling_s:.2f} | {r.step_s:.3f} | {1 / r.step_s:.2f} "
            f"| {r.image_s - r.sampling_s:.2f} |"
        )
    methods = [m for m in PREVIEWS if any(m in r.preview_step_s for r in rows)]
    if methods != ["none"]:
        print("\nseconds of the fastest step with each preview method (cost over none in brackets):")
        print("| size | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for r in rows:
            cells = [f"{r.preview_step_s['none']:.3f}"] + [
                f"{r.preview_step_s[m]:.3f} ({r.preview_cost_s[m]:+.3f})" for m in methods[1:]
            ]
            print(f"| {r.size} | " + " | ".join(cells) + " |")


def run(args: argparse.Namespace) -> int:
    try:
        model = resolve_model(args)
        loads, rows = measure(model, args)
    except SpeedError as exc:
        print(f"family_speed: {exc}", file=sys.stderr)
        return 2
    print_table(model, args, loads, rows)
    if args.json:
        payload = {
            "benchmark": "node_bench --family",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": str(model.folder),
            "family": model.family,
            "steps": model.steps,
            "generate": {k: v for k, v in model.generate_kwargs.items() if k != "negative_prompt"},
            "threads": args.threads or (os.cpu_count() or 1),
            "load_s": loads,
            "sizes": [asdict(r) for r in rows],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The family mode's own options (``--model``, ``--steps``, ``--cfg``, ``--sampler``,
    ``--threads``, ``--reps``, ``--quick``, ``--json``, ``--weights`` are shared)."""
    group = parser.add_argument_group("family speed (--family or --models-dir)")
    group.add_argument(
        "--family",
        choices=sorted(PRESETS),
        help="engine speed per size for this family: the synthetic model, or --models-dir/--model",
    )
    group.add_argument("--models-dir", help="a node's models dir; --model then names a folder in it")
    group.add_argument("--sizes", default="64,128,256", help="comma-separated N or WxH (default 64,128,256)")
    group.add_argument(
        "--preview",
        default="none",
        help="comma-separated preview methods to time: none, proj, tae, vae (default none)",
    )


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.family or args.models_dir)
