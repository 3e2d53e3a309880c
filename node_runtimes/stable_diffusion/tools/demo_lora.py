"""Synthetic LoRA files for the synthetic models (tests and demos; no download).

A LoRA adds ``scale * up @ down`` to a weight of the model (``scale = alpha / rank`` times the
prompt's multiplier, ``<lora:NAME:WEIGHT>``). These files use the naming that most LoRA files
people download use, kohya-ss's (``lora_unet_*`` / ``lora_te_*`` modules with
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``), which stable-diffusion.cpp converts
to its own names (``name_conversion.cpp``: ``_`` becomes ``.`` except inside known words, then
diffusers U-Net names become LDM names):

* :func:`write_sd1_lora`, for the SD1 tiny U-Net of :mod:`demo_checkpoint`: the q/k/v/out
  projections of both attentions of the three down-block transformers (diffusers names
  ``down_blocks.N.attentions.0.*``, which sd.cpp maps to ``input_blocks.3N+1.1.*``) and the q
  and v projections of the twelve CLIP text-encoder layers (``lora_te_*``). Fewer modules than
  a trained LoRA usually has: sd.cpp merges a LoRA into the weights on every change of LoRAs,
  and on this CPU each million merged weights costs time.
* :func:`write_flux_lora`, for the tiny FLUX.1 of :mod:`demo_flux`: attention, MLP and
  modulation projections of every double and single block (``lora_unet_double_blocks_*``,
  ``lora_unet_single_blocks_*``; the format of ComfyUI-converted FLUX LoRAs that sd.cpp's docs
  recommend).

Every tensor targets a real weight of its model (sd.cpp warns about LoRA tensors it cannot
apply), with rank 4 and alpha 4 (scale 1). ``down`` is normal with std 1/sqrt(fan_in) and ``up``
normal with std 0.1, so the change is of the order of the random weights themselves and
measurably changes the pixels. Deterministic for a given seed; written atomically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from llmlb_node.stable_diffusion.tools.demo_checkpoint import (
    Fill,
    Normal,
    TensorSpec,
    check_seed,
    numpy_dtype,
    whole_safetensors_header,
    write_weight_files,
)
from llmlb_node.stable_diffusion.tools.demo_flux import TINY_FLUX, FluxShape

__all__ = ["lora_is_complete", "write_flux_lora", "write_sd1_lora"]

RANK: Final = 4
_UP_STD: Final = 0.1
_LAYOUT_VERSION: Final = 2

# (module name without the lora_ prefix, in features, out features)
_Module = tuple[str, int, int]


def _lora_specs(modules: Iterator[_Module], rank: int) -> Iterator[TensorSpec]:
    for module, n_in, n_out in modules:
        yield f"lora_{module}.lora_down.weight", (rank, n_in), "fan_in"
        yield f"lora_{module}.lora_up.weight", (n_out, rank), Normal(_UP_STD)
        yield f"lora_{module}.alpha", (), Fill(float(rank))


def _sd1_modules() -> Iterator[_Module]:
    """Modules of the SD1 tiny U-Net (base width 320, multipliers 1/2/4, 8 heads) and CLIP-L."""
    context = 768
    for level, mult in enumerate((1, 2, 4)):
        inner = 320 * mult
        block = f"unet_down_blocks_{level}_attentions_0_transformer_blocks_0"
        for attn, kv_in in (("attn1", inner), ("attn2", context)):
            yield f"{block}_{attn}_to_q", inner, inner
            yield f"{block}_{attn}_to_k", kv_in, inner
            yield f"{block}_{attn}_to_v", kv_in, inner
            yield f"{block}_{attn}_to_out_0", inner, inner
    hidden = 768
    for layer in range(12):
        for proj in ("q_proj", "v_proj"):
            yield f"te_text_model_encoder_layers_{layer}_self_attn_{proj}", hidden, hidden


def _flux_modules(shape: FluxShape) -> Iterator[_Module]:
    hidden, mlp = shape.hidden, shape.hidden * shape.mlp_ratio
    for i in range(shape.double_blocks):
        for stream in ("img", "txt"):
            block = f"unet_double_blocks_{i}_{stream}"
            yield f"{block}_attn_qkv", hidden, hidden * 3
            yield f"{block}_attn_proj", hidden, hidden
            yield f"{block}_mlp_0", hidden, mlp
            yield f"{block}_mlp_2", mlp, hidden
            yield f"{block}_mod_lin", hidden, hidden * 6
    for i in range(shape.single_blocks):
        block = f"unet_single_blocks_{i}"
        yield f"{block}_linear1", hidden, hidden * 3 + mlp
        yield f"{block}_linear2", hidden + mlp, hidden
        yield f"{block}_modulation_lin", hidden, hidden * 3


def _write(path: Path, specs: list[TensorSpec], seed: int, description: str) -> Path:
    check_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_weight_files(
        path.parent,
        [(path.name, specs)],
        seed=seed,
        dtype=numpy_dtype("f16"),
        description=description,
        progress=None,
    )
    return path


def _sd1_description(seed: int) -> str:
    return f"llmlb demo LoRA for the synthetic SD1 tiny U-Net (layout {_LAYOUT_VERSION}), seed {seed}"


def _flux_description(seed: int, shape: FluxShape) -> str:
    return (
        f"llmlb demo LoRA for the synthetic FLUX.1 (layout {_LAYOUT_VERSION}: {shape.describe()}), "
        f"seed {seed}"
    )


def write_sd1_lora(path: Path, *, seed: int = 0) -> Path:
    """Write a LoRA for the SD1 demo model to `path` (``NAME.safetensors``: the prompt says
    ``<lora:NAME:1>``); return `path`."""
    return _write(path, list(_lora_specs(_sd1_modules(), RANK)), seed, _sd1_description(seed))


def write_flux_lora(path: Path, *, seed: int = 0, shape: FluxShape = TINY_FLUX) -> Path:
    """Write a LoRA for the FLUX.1 demo folder (same `shape`) to `path`; return `path`."""
    return _write(path, list(_lora_specs(_flux_modules(shape), RANK)), seed, _flux_description(seed, shape))


def lora_is_complete(path: Path, family: str, *, seed: int = 0, shape: FluxShape = TINY_FLUX) -> bool:
    """True if `path` is whole and was written by this module's writer for `family` ("sd1" or
    "flux") with these arguments."""
    expected = _sd1_description(seed) if family == "sd1" else _flux_description(seed, shape)
    header = whole_safetensors_header(Path(path))
    return header is not None and header.get("__metadata__", {}).get("description") == expected
