"""Synthetic, random-weight FLUX.1 model folder, split into files as a user downloads them.

FLUX.1 [schnell] comes as separate files: the diffusion model from Black Forest Labs
(``flux1-schnell.safetensors``), the autoencoder (``ae.safetensors``) and the text encoders
(``clip_l.safetensors``, ``t5xxl_fp16.safetensors``) from their own repositories. This module
writes such a folder with random weights and the exact tensor layout that stable-diffusion.cpp
expects, small enough for tests on a CPU, and **no model.toml**: the node must recognise it
from the file names and tensors alone.

What is written (names and shapes mirror the vendored ``stable-diffusion.cpp/src`` of
stable-diffusion-cpp-python 0.4.x: ``flux.hpp``, ``auto_encoder_kl.hpp``, ``clip.hpp``,
``tae.hpp``):

* ``flux1-schnell.safetensors``: a tiny FLUX.1 DiT with BFL names and no prefix (``img_in``,
  ``time_in``, ``vector_in``, ``guidance_in``, ``txt_in``, ``double_blocks.N.*``,
  ``single_blocks.N.*``, ``final_layer.*``). flux.hpp reads depth, width and text width from
  the tensors, so the DiT is hidden 256 with 2 double and 2 single blocks (about 8.5 M
  parameters). Fixed by the C++: head dim 128 (RoPE axes 16/56/56), 64 latent inputs and
  outputs, ``vector_in`` 768 (CLIP-L's pooled output), ``txt_in`` 4096 (T5-XXL's width: without
  a T5 file sd.cpp feeds 256 zero tokens), MLP ratio 4, biases on qkv and projections.
  ``guidance_in`` is present (as in FLUX.1 [dev]), so ``guidance`` reaches the model; the real
  schnell has none, and sd.cpp as well as the node tell the two apart by that tensor, not by
  the file name: this folder is served as FLUX.1 dev (``FluxShape(guidance=False)`` writes a
  schnell-like DiT).
* ``clip_l.safetensors``: the full CLIP ViT-L/14 text encoder with Hugging Face names
  (``text_model.*``; 123 M parameters; its size is hard-coded in clip.hpp).
* ``ae.safetensors``: the 16-channel FLUX autoencoder with LDM names (``encoder.*``,
  ``decoder.*``, no quant convs; 84 M parameters). Its sizes are those of the real ``ae``
  (encoder width 128 is fixed in the C++), so its encode / decode time is the real one.
* ``taef1.safetensors`` (optional): a 16-channel TAESD ("taef1"; ``encoder.layers.*``,
  ``decoder.layers.*``), for cheap previews (``taesd_path`` with ``tae_preview_only``).

No T5-XXL file: with ``clip_l`` alone sd.cpp runs FLUX.1 (with no text encoder at all it
crashes). About 431 MB in f16. Initialisation as in :mod:`demo_checkpoint` (normal std 0.02,
zero biases, norm weights and RMSNorm scales 1; TAESD convs std 1/sqrt(fan_in)), except the
DiT's linear weights: std 1/sqrt(fan_in). With std 0.02 its modulation gates and attention
logits are close to 0, the blocks pass almost nothing on, and the pixels hardly depend on the
prompt, on reference images or on a LoRA; with 1/sqrt(fan_in) every layer keeps the signal's
scale and they do.

Every file is written under a temporary name and renamed, each with the layout's description
in its metadata: :func:`demo_flux_is_complete` accepts a folder only when every file is whole
and carries this layout's description, so a folder from an older layout is rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from llmlb_node.stable_diffusion.tools.demo_checkpoint import (
    ProgressCallback,
    TensorSpec,
    check_seed,
    clip_text_specs,
    conv_specs,
    linear_specs,
    norm_specs,
    numpy_dtype,
    taesd_specs,
    whole_safetensors_header,
    write_weight_files,
)

__all__ = [
    "AE_FILE",
    "CLIP_L_FILE",
    "DIFFUSION_FILE",
    "FLUX_FILES",
    "TAE_FILE",
    "TINY_FLUX",
    "FluxShape",
    "demo_flux_is_complete",
    "demo_flux_load_kwargs",
    "flux_ae_specs",
    "flux_dit_specs",
    "write_demo_flux",
]

DIFFUSION_FILE: Final = "flux1-schnell.safetensors"
CLIP_L_FILE: Final = "clip_l.safetensors"
AE_FILE: Final = "ae.safetensors"
TAE_FILE: Final = "taef1.safetensors"
# Written in this order (a file's index is its seed stream, so the TAE, which is optional, is last).
FLUX_FILES: Final = (DIFFUSION_FILE, CLIP_L_FILE, AE_FILE, TAE_FILE)

LATENT_CHANNELS: Final = 16
_LAYOUT_VERSION: Final = 2


@dataclass(frozen=True)
class FluxShape:
    """The free sizes of the DiT (flux.hpp reads them from the tensors); the rest is fixed."""

    hidden: int = 256
    head_dim: int = 128  # RoPE axes 16/56/56: sd.cpp asserts at generation for other values
    double_blocks: int = 2
    single_blocks: int = 2
    guidance: bool = True

    mlp_ratio: int = 4
    in_channels: int = LATENT_CHANNELS * 2 * 2  # 2x2 patches of 16-channel latents
    vec_in: int = 768  # CLIP-L pooled output
    context_in: int = 4096  # T5-XXL width
    time_embed: int = 256  # sinusoidal timestep / guidance embedding width

    def describe(self) -> str:
        return (
            f"hidden {self.hidden}, head_dim {self.head_dim}, {self.double_blocks} double + "
            f"{self.single_blocks} single blocks, guidance_in {'yes' if self.guidance else 'no'}"
        )


# The DiT the tests use (about 8.5 M parameters).
TINY_FLUX: Final = FluxShape()


def _linear(prefix: str, n_in: int, n_out: int) -> Iterator[TensorSpec]:
    """DiT linears: std 1/sqrt(fan_in), so that every layer keeps the signal's scale."""
    yield from linear_specs(prefix, n_in, n_out, init="fan_in")


def _rms_norm_scale(prefix: str, dim: int) -> Iterator[TensorSpec]:
    yield f"{prefix}.scale", (dim,), "ones"


def _self_attention(prefix: str, hidden: int, head_dim: int) -> Iterator[TensorSpec]:
    """``SelfAttention`` (flux.hpp): qkv with bias, RMSNorm on q and k, projection."""
    yield from _linear(f"{prefix}.qkv", hidden, hidden * 3)
    yield from _rms_norm_scale(f"{prefix}.norm.query_norm", head_dim)
    yield from _rms_norm_scale(f"{prefix}.norm.key_norm", head_dim)
    yield from _linear(f"{prefix}.proj", hidden, hidden)


def _double_block(prefix: str, shape: FluxShape) -> Iterator[TensorSpec]:
    """``DoubleStreamBlock``: an image and a text stream; its LayerNorms have no parameters."""
    mlp = shape.hidden * shape.mlp_ratio
    for stream in ("img", "txt"):
        yield from _linear(f"{prefix}.{stream}_mod.lin", shape.hidden, shape.hidden * 6)
        yield from _self_attention(f"{prefix}.{stream}_attn", shape.hidden, shape.head_dim)
        yield from _linear(f"{prefix}.{stream}_mlp.0", shape.hidden, mlp)
        yield from _linear(f"{prefix}.{stream}_mlp.2", mlp, shape.hidden)


def _single_block(prefix: str, shape: FluxShape) -> Iterator[TensorSpec]:
    """``SingleStreamBlock``: fused qkv + MLP input, fused output."""
    mlp = shape.hidden * shape.mlp_ratio
    yield from _linear(f"{prefix}.linear1", shape.hidden, shape.hidden * 3 + mlp)
    yield from _linear(f"{prefix}.linear2", shape.hidden + mlp, shape.hidden)
    yield from _rms_norm_scale(f"{prefix}.norm.query_norm", shape.head_dim)
    yield from _rms_norm_scale(f"{prefix}.norm.key_norm", shape.head_dim)
    yield from _linear(f"{prefix}.modulation.lin", shape.hidden, shape.hidden * 3)


def _mlp_embedder(prefix: str, n_in: int, hidden: int) -> Iterator[TensorSpec]:
    yield from _linear(f"{prefix}.in_layer", n_in, hidden)
    yield from _linear(f"{prefix}.out_layer", hidden, hidden)


def flux_dit_specs(shape: FluxShape = TINY_FLUX, prefix: str = "") -> Iterator[TensorSpec]:
    """The FLUX.1 ``Flux`` block (flux.hpp) with BFL names; `prefix` e.g.
    ``model.diffusion_model.`` for a single-file checkpoint (empty: a diffusion-model file)."""
    if shape.hidden % shape.head_dim:
        raise ValueError(f"hidden {shape.hidden} is not a multiple of head_dim {shape.head_dim}")
    p = prefix
    yield from _linear(f"{p}img_in", shape.in_channels, shape.hidden)
    yield from _mlp_embedder(f"{p}time_in", shape.time_embed, shape.hidden)
    yield from _mlp_embedder(f"{p}vector_in", shape.vec_in, shape.hidden)
    if shape.guidance:
        yield from _mlp_embedder(f"{p}guidance_in", shape.time_embed, shape.hidden)
    yield from _linear(f"{p}txt_in", shape.context_in, shape.hidden)
    for i in range(shape.double_blocks):
        yield from _double_block(f"{p}double_blocks.{i}", shape)
    for i in range(shape.single_blocks):
        yield from _single_block(f"{p}single_blocks.{i}", shape)
    # LastLayer: its LayerNorm has no parameters; 2x2 patches of 16 channels out.
    yield from _linear(f"{p}final_layer.linear", shape.hidden, shape.in_channels)
    yield from _linear(f"{p}final_layer.adaLN_modulation.1", shape.hidden, shape.hidden * 2)


def _resnet_block(prefix: str, n_in: int, n_out: int) -> Iterator[TensorSpec]:
    """``ResnetBlock`` (auto_encoder_kl.hpp)."""
    yield from norm_specs(f"{prefix}.norm1", n_in)
    yield from conv_specs(f"{prefix}.conv1", n_in, n_out, 3)
    yield from norm_specs(f"{prefix}.norm2", n_out)
    yield from conv_specs(f"{prefix}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        yield from conv_specs(f"{prefix}.nin_shortcut", n_in, n_out, 1)


def _mid(prefix: str, channels: int) -> Iterator[TensorSpec]:
    """Middle: res block, single-head attention with 1x1 convs (as in the real ``ae``), res block."""
    yield from _resnet_block(f"{prefix}.block_1", channels, channels)
    yield from norm_specs(f"{prefix}.attn_1.norm", channels)
    for proj in ("q", "k", "v", "proj_out"):
        yield from conv_specs(f"{prefix}.attn_1.{proj}", channels, channels, 1)
    yield from _resnet_block(f"{prefix}.block_2", channels, channels)


def flux_ae_specs(decoder_ch: int = 128) -> Iterator[TensorSpec]:
    """``AutoEncoderKLModel`` for DiT versions: 16 latent channels, no quant convs.

    Encoder width 128 and channel multipliers 1/2/4/4 are fixed in the C++; the decoder width
    is read from ``decoder.conv_in.weight`` (128 in the real FLUX ``ae``).
    """
    ch_mult = (1, 2, 4, 4)
    num_res_blocks = 2
    enc_ch = 128

    yield from conv_specs("encoder.conv_in", 3, enc_ch, 3)
    block_in = enc_ch
    for i, mult in enumerate(ch_mult):
        block_out = enc_ch * mult
        for j in range(num_res_blocks):
            yield from _resnet_block(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != len(ch_mult) - 1:
            yield from conv_specs(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    yield from _mid("encoder.mid", block_in)
    yield from norm_specs("encoder.norm_out", block_in)
    yield from conv_specs("encoder.conv_out", block_in, LATENT_CHANNELS * 2, 3)  # mean + logvar

    block_in = decoder_ch * ch_mult[-1]
    yield from conv_specs("decoder.conv_in", LATENT_CHANNELS, block_in, 3)
    yield from _mid("decoder.mid", block_in)
    for i in reversed(range(len(ch_mult))):
        block_out = decoder_ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            yield from _resnet_block(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            yield from conv_specs(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    yield from norm_specs("decoder.norm_out", block_in)
    yield from conv_specs("decoder.conv_out", block_in, 3, 3)


def _description(seed: int, shape: FluxShape) -> str:
    return (
        f"llmlb demo model: synthetic random-weight FLUX.1 (layout {_LAYOUT_VERSION}: "
        f"{shape.describe()}), seed {seed}"
    )


def write_demo_flux(
    directory: Path,
    *,
    seed: int = 0,
    tae: bool = True,
    shape: FluxShape = TINY_FLUX,
    progress: ProgressCallback | None = None,
    dtype: str = "f16",
) -> Path:
    """Write the FLUX.1 folder (DIFFUSION_FILE, CLIP_L_FILE, AE_FILE and, if `tae`, TAE_FILE)
    into `directory` (created if missing) and return `directory`. No model.toml.

    Each file is written atomically; the same seed gives byte-identical files. progress is
    called as in :func:`demo_checkpoint.write_demo_model`. `dtype` is "f16" (about 431 MB with
    the TAE) or "f32".
    """
    np_dtype = numpy_dtype(dtype)
    check_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, list[TensorSpec]]] = [
        (DIFFUSION_FILE, list(flux_dit_specs(shape))),
        (CLIP_L_FILE, list(clip_text_specs("text_model"))),
        (AE_FILE, list(flux_ae_specs())),
    ]
    if tae:
        files.append((TAE_FILE, list(taesd_specs(LATENT_CHANNELS))))
    write_weight_files(
        directory,
        files,
        seed=seed,
        dtype=np_dtype,
        description=_description(seed, shape),
        progress=progress,
    )
    return directory


def demo_flux_is_complete(
    directory: Path, *, seed: int = 0, tae: bool = True, shape: FluxShape = TINY_FLUX
) -> bool:
    """True if `directory` holds the files :func:`write_demo_flux` writes with these arguments,
    whole (header parses, size matches) and written for this layout and seed."""
    expected = _description(seed, shape)
    names = FLUX_FILES if tae else FLUX_FILES[:-1]
    for name in names:
        header = whole_safetensors_header(Path(directory) / name)
        if header is None or header.get("__metadata__", {}).get("description") != expected:
            return False
    return True


def demo_flux_load_kwargs(directory: Path, *, tae: bool = True) -> dict[str, str]:
    """The binding's constructor arguments for the folder's files: ``StableDiffusion(**these,
    n_threads=..., vae_decode_only=False)``. With `tae`, the TAE is passed as ``taesd_path``:
    add ``tae_preview_only=True`` to keep decoding final images with the AE."""
    directory = Path(directory)
    kwargs = {
        "diffusion_model_path": str(directory / DIFFUSION_FILE),
        "clip_l_path": str(directory / CLIP_L_FILE),
        "vae_path": str(directory / AE_FILE),
    }
    if tae:
        kwargs["taesd_path"] = str(directory / TAE_FILE)
    return kwargs
