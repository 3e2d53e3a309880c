"""Synthetic, random-weight Stable Diffusion checkpoint for tests and demos (no download).

No model weights can be downloaded on CI and sandbox machines, and no package ships SD weights.
stable-diffusion.cpp, however, only cares about tensor *names and shapes*: the architecture
sizes are hard-coded in its C++ sources. So this module writes a checkpoint with the exact
tensor layout of the smallest SD1 variant that stable-diffusion.cpp accepts, filled with
deterministic random numbers, and real stable-diffusion.cpp inference (txt2img, img2img,
inpainting, batches, GGUF conversion) runs on it. The images are noise-like, of course.

What is written (names and shapes mirror the block constructors in the vendored
``stable-diffusion.cpp/src`` of stable-diffusion-cpp-python 0.4.x: ``unet.hpp``,
``common_block.hpp``, ``clip.hpp``, ``tae.hpp``; version detection in ``model.cpp``):

* ``model.safetensors`` (original LDM names)

  - ``cond_stage_model.transformer.text_model.*``: the CLIP ViT-L/14 text encoder of SD 1.x
    (12 layers, width 768, vocabulary 49408, 77 positions; about 123 M parameters).
  - ``model.diffusion_model.*``: the SD1 **"tiny U-Net"** (base width 320, one res block per
    level, channel multipliers 1/2/4, attention at every level, no ``middle_block``; about
    323 M parameters). stable-diffusion.cpp detects it as **"SD 1.x Tiny UNet"** because
    ``middle_block.1.*`` is absent while ``output_blocks.7.1.*`` is present.
  - No KL VAE (``first_stage_model.*``): it would add 84 M parameters for nothing.

* ``taesd.safetensors``: a TAESD tiny autoencoder (``encoder.layers.*``, ``decoder.layers.*``;
  2.4 M parameters), passed to stable-diffusion.cpp as ``taesd_path`` and used for both encode
  and decode. The encoder is kept because img2img and inpainting need it.

* ``model.toml``: the node's per-model profile (sampling defaults for this checkpoint).

Initialisation is deterministic for a given ``seed`` (numpy ``Generator``): U-Net and CLIP
weights are normal with std 0.02, biases 0, norm weights 1. TAESD has no norms, so its convs use
std ``1/sqrt(fan_in)``; its last decoder conv gets a small std and bias 0.5 so that pixels sit
around mid-grey instead of saturating at 0 or 255.

Every file is written under a temporary name in the target directory and then renamed, so an
interrupted run never leaves a half-written file under its final name;
:func:`demo_model_is_complete` checks all three files.

Never commit the generated weights: create them once per test session (or with
``llmlb demo-model``) in a temporary or git-ignored directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "MODEL_FILE",
    "PROFILE_FILE",
    "TAESD_FILE",
    "Fill",
    "Init",
    "Normal",
    "ProgressCallback",
    "TensorSpec",
    "check_seed",
    "clip_text_specs",
    "conv_specs",
    "demo_model_is_complete",
    "linear_specs",
    "norm_specs",
    "numpy_dtype",
    "safetensors_is_whole",
    "taesd_specs",
    "whole_safetensors_header",
    "write_demo_model",
    "write_safetensors",
    "write_text_atomic",
    "write_weight_files",
]

MODEL_FILE: Final = "model.safetensors"
TAESD_FILE: Final = "taesd.safetensors"
PROFILE_FILE: Final = "model.toml"

PROFILE_TEXT: Final = (
    "# Synthetic random-weight SD1 tiny-UNet checkpoint made by `llmlb demo-model`"
    " (for tests and demos; images are noise-like).\n"
    """\
description = "synthetic SD1 tiny U-Net (random weights)"
steps = 2
cfg_scale = 1.0
sampler = "euler"
native_size = "64x64"
taesd = "taesd.safetensors"
"""
)

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Normal:
    """Normal values with this standard deviation (for tensors that need another than 0.02)."""

    std: float


@dataclass(frozen=True)
class Fill:
    """Every value equal to this one (a LoRA's alpha, for example)."""

    value: float


# How a tensor is initialised: "normal" is std 0.02, "fan_in" std 1/sqrt(fan_in) (TAESD convs),
# "out_weight" / "out_bias" the last TAESD decoder conv (see the module docstring).
Init = Literal["normal", "zeros", "ones", "fan_in", "out_weight", "out_bias"] | Normal | Fill
# (name, shape, init)
TensorSpec = tuple[str, tuple[int, ...], Init]

_WEIGHT_STD: Final = 0.02  # U-Net and CLIP weights
_TAESD_OUT_STD_SCALE: Final = 0.1  # last TAESD decoder conv: std = scale / sqrt(fan_in)
_TAESD_OUT_BIAS: Final = 0.5  # ... and bias 0.5 (TAESD decodes straight to [0, 1])

_DTYPES: Final[dict[str, type[np.floating]]] = {"f16": np.float16, "f32": np.float32}

# ---------------------------------------------------------------------------------------------
# Layout: ports of the stable-diffusion.cpp block constructors (names relative to a prefix).
# Linear weights are [out, in] and conv weights [out, in, kh, kw] (PyTorch order), as in
# safetensors checkpoints; ggml's reversed `ne` order is handled by the loader.
# ---------------------------------------------------------------------------------------------


def linear_specs(
    prefix: str, n_in: int, n_out: int, *, bias: bool = True, init: Init = "normal"
) -> Iterator[TensorSpec]:
    yield f"{prefix}.weight", (n_out, n_in), init
    if bias:
        yield f"{prefix}.bias", (n_out,), "zeros"


def conv_specs(prefix: str, n_in: int, n_out: int, kernel: int, *, bias: bool = True) -> Iterator[TensorSpec]:
    yield f"{prefix}.weight", (n_out, n_in, kernel, kernel), "normal"
    if bias:
        yield f"{prefix}.bias", (n_out,), "zeros"


def norm_specs(prefix: str, channels: int) -> Iterator[TensorSpec]:
    """GroupNorm32 / LayerNorm: weight 1, bias 0."""
    yield f"{prefix}.weight", (channels,), "ones"
    yield f"{prefix}.bias", (channels,), "zeros"


def _res_block(prefix: str, channels: int, emb_channels: int, out_channels: int) -> Iterator[TensorSpec]:
    """``ResBlock`` (common_block.hpp)."""
    yield from norm_specs(f"{prefix}.in_layers.0", channels)
    yield from conv_specs(f"{prefix}.in_layers.2", channels, out_channels, 3)
    yield from linear_specs(f"{prefix}.emb_layers.1", emb_channels, out_channels)
    yield from norm_specs(f"{prefix}.out_layers.0", out_channels)
    yield from conv_specs(f"{prefix}.out_layers.3", out_channels, out_channels, 3)
    if out_channels != channels:
        yield from conv_specs(f"{prefix}.skip_connection", channels, out_channels, 1)


def _cross_attention(prefix: str, query_dim: int, context_dim: int, inner: int) -> Iterator[TensorSpec]:
    """``CrossAttention`` (common_block.hpp): q/k/v without bias, to_out.0 with bias."""
    yield from linear_specs(f"{prefix}.to_q", query_dim, inner, bias=False)
    yield from linear_specs(f"{prefix}.to_k", context_dim, inner, bias=False)
    yield from linear_specs(f"{prefix}.to_v", context_dim, inner, bias=False)
    yield from linear_specs(f"{prefix}.to_out.0", inner, query_dim)


def _spatial_transformer(
    prefix: str, channels: int, n_head: int, d_head: int, context_dim: int
) -> Iterator[TensorSpec]:
    """``SpatialTransformer`` with depth 1 and conv (not linear) projections, as in SD 1.x."""
    inner = n_head * d_head
    yield from norm_specs(f"{prefix}.norm", channels)
    yield from conv_specs(f"{prefix}.proj_in", channels, inner, 1)
    block = f"{prefix}.transformer_blocks.0"  # BasicTransformerBlock
    yield from _cross_attention(f"{block}.attn1", inner, inner, inner)
    yield from _cross_attention(f"{block}.attn2", inner, context_dim, inner)
    yield from linear_specs(f"{block}.ff.net.0.proj", inner, inner * 4 * 2)  # GEGLU, mult 4
    yield from linear_specs(f"{block}.ff.net.2", inner * 4, inner)
    for norm in ("norm1", "norm2", "norm3"):
        yield from norm_specs(f"{block}.{norm}", inner)
    yield from conv_specs(f"{prefix}.proj_out", inner, channels, 1)


def _tiny_unet_specs(prefix: str = "model.diffusion_model") -> Iterator[TensorSpec]:
    """``UnetModelBlock`` for ``VERSION_SD1_TINY_UNET`` (unet.hpp), index quirks included."""
    in_channels = out_channels = 4
    model_channels = 320
    time_embed_dim = model_channels * 4
    channel_mult = (1, 2, 4)
    num_res_blocks = 1
    attention_resolutions = (4, 2, 1)
    num_heads = 8
    context_dim = 768

    yield from linear_specs(f"{prefix}.time_embed.0", model_channels, time_embed_dim)
    yield from linear_specs(f"{prefix}.time_embed.2", time_embed_dim, time_embed_dim)
    yield from conv_specs(f"{prefix}.input_blocks.0.0", in_channels, model_channels, 3)

    inp, outp = f"{prefix}.input_blocks", f"{prefix}.output_blocks"
    input_block_chans = [model_channels]
    ch = model_channels
    idx = 0
    ds = 1
    for i, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            idx += 1
            yield from _res_block(f"{inp}.{idx}.0", ch, time_embed_dim, mult * model_channels)
            ch = mult * model_channels
            if ds in attention_resolutions:
                yield from _spatial_transformer(f"{inp}.{idx}.1", ch, num_heads, ch // num_heads, context_dim)
            input_block_chans.append(ch)
            idx += 1  # tiny U-Net: the second res block's slot stays empty
        if i != len(channel_mult) - 1:
            idx += 1
            yield from conv_specs(f"{inp}.{idx}.0.op", ch, ch, 3)  # DownSampleBlock
            input_block_chans.append(ch)
            ds *= 2

    # No middle_block: that is what makes stable-diffusion.cpp detect the tiny U-Net.

    out_idx = 0
    for i in reversed(range(len(channel_mult))):
        mult = channel_mult[i]
        for j in range(num_res_blocks + 1):
            ich = input_block_chans.pop()
            yield from _res_block(f"{outp}.{out_idx}.0", ch + ich, time_embed_dim, mult * model_channels)
            ch = mult * model_channels
            up_sample_idx = 1
            if ds in attention_resolutions:
                yield from _spatial_transformer(
                    f"{outp}.{out_idx}.1", ch, num_heads, ch // num_heads, context_dim
                )
                up_sample_idx += 1
            if i > 0 and j == num_res_blocks:
                out_idx += 1  # tiny U-Net quirk, mirrored from unet.hpp
                if out_idx == 2:
                    up_sample_idx = 1
                yield from conv_specs(f"{outp}.{out_idx}.{up_sample_idx}.conv", ch, ch, 3)
                ds //= 2
            out_idx += 1

    yield from norm_specs(f"{prefix}.out.0", ch)
    yield from conv_specs(f"{prefix}.out.2", model_channels, out_channels, 3)


def clip_text_specs(prefix: str = "cond_stage_model.transformer.text_model") -> Iterator[TensorSpec]:
    """``CLIPTextModel`` for ``OPENAI_CLIP_VIT_L_14`` (clip.hpp), with the final layer norm."""
    vocab_size, num_positions = 49408, 77
    hidden, intermediate, n_layer = 768, 3072, 12
    yield f"{prefix}.embeddings.token_embedding.weight", (vocab_size, hidden), "normal"
    yield f"{prefix}.embeddings.position_embedding.weight", (num_positions, hidden), "normal"
    for layer in range(n_layer):
        p = f"{prefix}.encoder.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from linear_specs(f"{p}.self_attn.{proj}", hidden, hidden)
        yield from norm_specs(f"{p}.layer_norm1", hidden)
        yield from norm_specs(f"{p}.layer_norm2", hidden)
        yield from linear_specs(f"{p}.mlp.fc1", hidden, intermediate)
        yield from linear_specs(f"{p}.mlp.fc2", intermediate, hidden)
    yield from norm_specs(f"{prefix}.final_layer_norm", hidden)
    # `embeddings.position_ids` is listed as unused in model.cpp, so it is not written.


def _tae_block(prefix: str, channels: int) -> Iterator[TensorSpec]:
    """``TAEBlock`` with n_in == n_out (no skip conv, no mid-block GroupNorm)."""
    for k in (0, 2, 4):
        yield from _tae_conv(f"{prefix}.conv.{k}", channels, channels, bias=True)


def _tae_conv(prefix: str, n_in: int, n_out: int, *, bias: bool) -> Iterator[TensorSpec]:
    yield f"{prefix}.weight", (n_out, n_in, 3, 3), "fan_in"
    if bias:
        yield f"{prefix}.bias", (n_out,), "zeros"


def taesd_specs(z_channels: int = 4) -> Iterator[TensorSpec]:
    """``TAESD`` (tae.hpp): ``TinyEncoder`` + ``TinyDecoder``; z_channels 4 for SD 1.x/2.x/XL,
    16 for FLUX.1 / SD3 ("taef1", "taesd3")."""
    ch, z, num_blocks = 64, z_channels, 3

    # TinyEncoder: conv, block, 3 x (stride-2 conv without bias, 3 blocks), conv to latents.
    idx = 0
    yield from _tae_conv(f"encoder.layers.{idx}", 3, ch, bias=True)
    idx += 1
    yield from _tae_block(f"encoder.layers.{idx}", ch)
    idx += 1
    for _ in range(3):
        yield from _tae_conv(f"encoder.layers.{idx}", ch, ch, bias=False)
        idx += 1
        for _ in range(num_blocks):
            yield from _tae_block(f"encoder.layers.{idx}", ch)
            idx += 1
    yield from _tae_conv(f"encoder.layers.{idx}", ch, z, bias=True)

    # TinyDecoder: conv, (ReLU), 3 x (3 blocks, (Upsample), conv without bias), block, conv.
    idx = 0
    yield from _tae_conv(f"decoder.layers.{idx}", z, ch, bias=True)
    idx += 2  # index 1 is nn.ReLU
    for _ in range(3):
        for _ in range(num_blocks):
            yield from _tae_block(f"decoder.layers.{idx}", ch)
            idx += 1
        idx += 1  # nn.Upsample
        yield from _tae_conv(f"decoder.layers.{idx}", ch, ch, bias=False)
        idx += 1
    yield from _tae_block(f"decoder.layers.{idx}", ch)
    idx += 1
    yield f"decoder.layers.{idx}.weight", (3, ch, 3, 3), "out_weight"
    yield f"decoder.layers.{idx}.bias", (3,), "out_bias"


# ---------------------------------------------------------------------------------------------
# Generation and writing.
# ---------------------------------------------------------------------------------------------


def _make_tensor(
    seed_seq: np.random.SeedSequence, shape: tuple[int, ...], init: Init, dtype: type[np.floating]
) -> npt.NDArray[np.floating]:
    if isinstance(init, Fill):
        return np.full(shape, init.value, dtype=dtype)
    if init == "zeros":
        return np.zeros(shape, dtype=dtype)
    if init == "ones":
        return np.ones(shape, dtype=dtype)
    if init == "out_bias":
        return np.full(shape, _TAESD_OUT_BIAS, dtype=dtype)
    if isinstance(init, Normal):
        std = init.std
    elif init == "normal":
        std = _WEIGHT_STD
    else:  # "fan_in" / "out_weight": conv [out, in, kh, kw]
        fan_in = math.prod(shape[1:])
        std = (_TAESD_OUT_STD_SCALE if init == "out_weight" else 1.0) / math.sqrt(fan_in)
    # numpy releases the GIL while filling and casting, so tensors are made on worker threads.
    values = np.random.default_rng(seed_seq).standard_normal(shape, dtype=np.float32)
    values *= np.float32(std)
    return values if dtype is np.float32 else values.astype(dtype)


def write_safetensors(
    path: Path,
    specs: list[TensorSpec],
    seed: int,
    file_key: int,
    dtype: type[np.floating],
    metadata: dict[str, str],
    on_tensor: Callable[[str], None],
) -> None:
    """Generate the tensors and write them to `path` atomically (temp file + rename).

    Tensor i of file `file_key` is drawn from ``SeedSequence(seed, spawn_key=(file_key, i))``,
    so the output depends only on the seed, never on thread scheduling.
    """
    from safetensors.numpy import save_file

    def make(item: tuple[int, TensorSpec]) -> npt.NDArray[np.floating]:
        index, (_, shape, init) = item
        seed_seq = np.random.SeedSequence(seed, spawn_key=(file_key, index))
        return _make_tensor(seed_seq, shape, init, dtype)

    tensors: dict[str, npt.NDArray[np.floating]] = {}
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-model") as pool:
        for (name, _, _), tensor in zip(specs, pool.map(make, enumerate(specs)), strict=True):
            tensors[name] = tensor
            on_tensor(name)

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        del tensors
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_weight_files(
    directory: Path,
    files: Sequence[tuple[str, list[TensorSpec]]],
    *,
    seed: int,
    dtype: type[np.floating],
    description: str,
    progress: ProgressCallback | None,
) -> None:
    """Write each (file name, tensor specs) of `files` into `directory` with write_safetensors
    (file i draws its tensors with file_key i), in order.

    progress(step, total, label) is called once per tensor (label: the tensor name) and once per
    finished file (label: "wrote FILE"); the last call has step == total.
    """
    total = sum(len(specs) for _, specs in files) + len(files)
    step = 0

    def tick(label: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total, label)

    # One key only: safetensors writes metadata from a hash map, so with several keys their
    # order (and the file's bytes) would vary between runs.
    metadata = {"description": description}
    for file_key, (name, specs) in enumerate(files):
        write_safetensors(directory / name, specs, seed, file_key, dtype, metadata, tick)
        tick(f"wrote {name}")


def numpy_dtype(dtype: str) -> type[np.floating]:
    """The numpy type of a writer's `dtype` argument ("f16" or "f32")."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    return _DTYPES[dtype]


def check_seed(seed: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")


def write_demo_model(
    directory: Path,
    *,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    dtype: str = "f16",
) -> Path:
    """Write MODEL_FILE, TAESD_FILE and PROFILE_FILE into `directory` (created if missing) and
    return `directory`.

    Writes to temp names then renames atomically, so a crash never leaves a half-written model
    that looks complete (the profile is written last).
    progress(step, total, label) is called as tensors are generated (for progress logs/bars):
    once per tensor (label: the tensor name) and once per finished file (label: "wrote FILE");
    the last call has step == total.
    `seed` must be >= 0; the same seed gives byte-identical files.
    `dtype` is "f16" (default, about 850 MiB) or "f32" (twice that).
    """
    np_dtype = numpy_dtype(dtype)
    check_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Rewriting over an older model: drop the profile first, so that an interrupted run never
    # looks complete with weight files from two different runs.
    (directory / PROFILE_FILE).unlink(missing_ok=True)

    write_weight_files(
        directory,
        [
            (TAESD_FILE, list(taesd_specs())),
            (MODEL_FILE, list(clip_text_specs()) + list(_tiny_unet_specs())),
        ],
        seed=seed,
        dtype=np_dtype,
        description=f"llmlb demo model: synthetic random-weight SD1 tiny U-Net, seed {seed}",
        progress=progress,
    )
    write_text_atomic(directory / PROFILE_FILE, PROFILE_TEXT)
    return directory


def whole_safetensors_header(path: Path) -> dict[str, Any] | None:
    """The parsed safetensors header of `path` if the file is whole (cheap structural check:
    the header parses and the file is exactly as long as it says), else None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) != 8:
                return None
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len <= 0 or 8 + header_len > size:
                return None
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or "data_offsets" not in info:
            return None
        end = max(end, int(info["data_offsets"][1]))
    return header if end > 0 and size == 8 + header_len + end else None


def safetensors_is_whole(path: Path) -> bool:
    return whole_safetensors_header(path) is not None


def demo_model_is_complete(directory: Path) -> bool:
    """True if `directory` holds a finished demo model: the profile plus both weight files,
    whole (their safetensors headers parse and match the file sizes)."""
    directory = Path(directory)
    return (
        (directory / PROFILE_FILE).is_file()
        and safetensors_is_whole(directory / MODEL_FILE)
        and safetensors_is_whole(directory / TAESD_FILE)
    )
