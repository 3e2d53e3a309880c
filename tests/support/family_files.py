"""Synthetic weights files as the model publishers name them, for folder-mapping tests.

Each file holds the real tensor NAMES of its kind (the representative subset that sd.cpp's
``get_sd_version()`` and our classifier look at) with tiny shapes, except where a shape is what
tells kinds apart (CLIP-L vs CLIP-G width, in-channels of Fill/Controls/inpainting, latent
channels of an autoencoder). Safetensors files are written sparse: the header is real and the
data region is a hole (``truncate``), so real shapes cost no disk. GGUF files go through the
``gguf`` package's writer with small tensors.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Shapes = Mapping[str, tuple[int, ...]]
DM = "model.diffusion_model."


def write_safetensors(path: Path, tensors: Shapes, *, dtype: str = "F16") -> Path:
    """A safetensors file with this header and a sparse (all-zero) data region."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return path


def write_gguf(path: Path, tensors: Shapes, *, arch: str = "flux") -> Path:
    """A GGUF file (``general.architecture`` = ``arch``) with zero tensors of these shapes."""
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), arch)
    if arch not in ("flux", "clip"):  # an LLM / T5: a vocabulary, as llama.cpp's files carry
        writer.add_token_list([f"tok{i}" for i in range(1000)])
        writer.add_token_scores([0.0] * 1000)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write(path: Path, tensors: Shapes, *, arch: str = "flux") -> Path:
    return (
        write_gguf(path, tensors, arch=arch) if path.suffix == ".gguf" else write_safetensors(path, tensors)
    )


# --------------------------------------------------------------------------- components

CLIP_L: Shapes = {
    "text_model.embeddings.token_embedding.weight": (49408, 768),
    "text_model.embeddings.position_embedding.weight": (77, 768),
    "text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
    "text_model.final_layer_norm.weight": (768,),
}
CLIP_G: Shapes = {
    "text_model.embeddings.token_embedding.weight": (49408, 1280),
    "text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
    "text_projection.weight": (8, 8),
}
T5XXL: Shapes = {
    "shared.weight": (8, 8),
    "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8),
    "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (8, 8),
    "encoder.final_layer_norm.weight": (8,),
}
T5XXL_GGUF: Shapes = {"token_embd.weight": (8, 8), "enc.blk.0.attn_q.weight": (8, 8)}


def kl_vae(z_channels: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """An LDM KL autoencoder (SD: 4 latent channels, FLUX.1 ae: 16, FLUX.2 ae: 32)."""
    return {
        f"{prefix}encoder.conv_in.weight": (128, 3, 3, 3),
        f"{prefix}encoder.down.0.block.0.conv1.weight": (8, 8, 3, 3),
        f"{prefix}decoder.conv_in.weight": (512, z_channels, 3, 3),
        f"{prefix}decoder.up.0.block.0.conv1.weight": (8, 8, 3, 3),
        f"{prefix}decoder.conv_out.weight": (3, 128, 3, 3),
    }


# The Wan / Qwen-Image causal 3-D autoencoder (wan.hpp: conv1, downsamples, upsamples, head).
VIDEO_VAE: Shapes = {
    "conv1.weight": (32, 32, 1, 1, 1),
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.downsamples.0.residual.2.weight": (8, 8, 3, 3, 3),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.upsamples.0.residual.2.weight": (8, 8, 3, 3, 3),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}


def taesd(z_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        "encoder.layers.0.weight": (64, 3, 3, 3),
        "encoder.layers.1.conv.0.weight": (64, 64, 3, 3),
        "decoder.layers.0.weight": (64, z_channels, 3, 3),
        "decoder.layers.2.conv.0.weight": (64, 64, 3, 3),
    }


def hf_llm(*, qwen3: bool = False, vision: bool = False) -> dict[str, tuple[int, ...]]:
    """A Hugging Face causal LM (Qwen2.5-VL with ``visual.*``, Qwen3 with q_norm, Mistral)."""
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (16, 8),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.mlp.gate_proj.weight": (8, 8),
        "model.norm.weight": (8,),
    }
    if qwen3:
        out["model.layers.0.self_attn.q_norm.weight"] = (8,)
    if vision:
        out["visual.patch_embed.proj.weight"] = (8, 8)
        out["visual.blocks.0.attn.qkv.weight"] = (8, 8)
    return out


GGUF_LLM: Shapes = {
    "token_embd.weight": (16, 8),
    "blk.0.attn_q.weight": (8, 8),
    "blk.0.ffn_gate.weight": (8, 8),
    "output_norm.weight": (8,),
}
GGUF_MMPROJ: Shapes = {"v.patch_embd.weight": (8, 8), "v.blk.0.attn_q.weight": (8, 8), "mm.0.weight": (8, 8)}
LORA: Shapes = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (8, 4),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (1,),
}
FLUX_LORA: Shapes = {
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": (4, 8),
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": (8, 4),
}

# --------------------------------------------------------------------------- diffusion models


def unet(
    in_channels: int = 4,
    *,
    xl: bool = False,
    middle: bool = True,
    out_311: bool = True,
    prefix: str = DM,
) -> dict[str, tuple[int, ...]]:
    """An LDM U-Net (unet.hpp names). SDXL has ``label_emb``; tiny/distilled ones lack
    ``middle_block.1``; SSD-1B keeps ``output_blocks.3.1.transformer_blocks.1``."""
    out: dict[str, tuple[int, ...]] = {
        f"{prefix}input_blocks.0.0.weight": (320, in_channels, 3, 3),
        f"{prefix}input_blocks.1.1.proj_in.weight": (8, 8),
        f"{prefix}output_blocks.7.1.proj_in.weight": (8, 8),
        f"{prefix}out.2.weight": (4, 320, 3, 3),
    }
    if middle:
        out[f"{prefix}middle_block.1.proj_in.weight"] = (8, 8)
    if xl:
        out[f"{prefix}label_emb.0.0.weight"] = (8, 8)
        if out_311:
            out[f"{prefix}output_blocks.3.1.transformer_blocks.1.attn1.to_q.weight"] = (8, 8)
    return out


def sd1_checkpoint(in_channels: int = 4, *, vae: bool = True) -> dict[str, tuple[int, ...]]:
    out = unet(in_channels)
    out["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = (49408, 768)
    out["cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"] = (8, 8)
    if vae:
        out |= kl_vae(4, "first_stage_model.")
    return out


def sd2_checkpoint(in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    out = unet(in_channels)
    out["cond_stage_model.model.token_embedding.weight"] = (49408, 1024)
    out["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = (8, 8)
    return out | kl_vae(4, "first_stage_model.")


def sdxl_checkpoint(
    in_channels: int = 4, *, middle: bool = True, out_311: bool = True
) -> dict[str, tuple[int, ...]]:
    out = unet(in_channels, xl=True, middle=middle, out_311=out_311)
    out["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = (49408, 768)
    out["conditioner.embedders.1.model.token_embedding.weight"] = (49408, 1280)
    out["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"] = (8, 8)
    return out | kl_vae(4, "first_stage_model.")


def mmdit(*, with_vae: bool = True, with_text: bool = False) -> dict[str, tuple[int, ...]]:
    """SD3.x (mmdit.hpp): joint_blocks; sd3.5_large.safetensors also holds the VAE."""
    out: dict[str, tuple[int, ...]] = {
        f"{DM}x_embedder.proj.weight": (8, 16, 2, 2),
        f"{DM}joint_blocks.0.x_block.attn.qkv.weight": (8, 8),
        f"{DM}joint_blocks.0.context_block.attn.qkv.weight": (8, 8),
        f"{DM}final_layer.linear.weight": (8, 8),
    }
    if with_vae:
        out |= kl_vae(16, "first_stage_model.")
    if with_text:
        out |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in CLIP_L.items()}
        out |= {f"text_encoders.clip_g.transformer.{k}": v for k, v in CLIP_G.items()}
        out |= {f"text_encoders.t5xxl.transformer.{k}": v for k, v in T5XXL.items()}
    return out


def flux(
    *, img_in: int = 64, guidance: bool = True, chroma: bool = False, radiance: bool = False, prefix: str = ""
) -> dict[str, tuple[int, ...]]:
    """FLUX.1 in BFL names (flux.hpp): dev has guidance_in, schnell not; Fill/Controls/Flex.2
    differ in img_in's input width; Chroma adds distilled_guidance_layer."""
    out: dict[str, tuple[int, ...]] = {
        f"{prefix}img_in.weight": (16, img_in),
        f"{prefix}txt_in.weight": (16, 4096),
        f"{prefix}time_in.in_layer.weight": (16, 256),
        f"{prefix}double_blocks.0.img_attn.qkv.weight": (48, 16),
        f"{prefix}double_blocks.0.txt_attn.norm.key_norm.scale": (128,),
        f"{prefix}single_blocks.0.linear1.weight": (80, 16),
        f"{prefix}final_layer.linear.weight": (64, 16),
    }
    if guidance:
        out[f"{prefix}guidance_in.in_layer.weight"] = (16, 256)
    if chroma:
        out[f"{prefix}distilled_guidance_layer.in_proj.weight"] = (16, 64)
    if radiance:
        out[f"{prefix}nerf_final_layer_conv.conv.weight"] = (3, 16, 3, 3)
        out[f"{prefix}img_in_patch.weight"] = (16, 3, 16, 16)
    return out


def flux2(*, klein: bool) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {
        "img_in.weight": (16, 128),
        "double_stream_modulation_img.lin.weight": (96, 16),
        "double_blocks.0.img_attn.qkv.weight": (48, 16),
        "single_blocks.0.linear1.weight": (80, 16),
    }
    if not klein:
        out["single_blocks.47.linear1.weight"] = (80, 16)
    return out


QWEN_IMAGE: Shapes = {
    "img_in.weight": (16, 64),
    "txt_in.weight": (16, 3584),
    "transformer_blocks.0.img_mod.1.weight": (96, 16),
    "transformer_blocks.0.txt_mod.1.weight": (96, 16),
    "proj_out.weight": (64, 16),
}
Z_IMAGE: Shapes = {
    "x_embedder.weight": (16, 64),
    "cap_embedder.0.weight": (2560,),
    "cap_embedder.1.weight": (16, 2560),
    "layers.0.attention.qkv.weight": (48, 16),
}
OVIS_IMAGE: Shapes = {
    "img_in.weight": (16, 64),
    "double_blocks.0.img_mlp.gate_proj.weight": (32, 16),
    "double_blocks.0.img_attn.qkv.weight": (48, 16),
    "single_blocks.0.linear1.weight": (80, 16),
}
ANIMA: Shapes = {
    "llm_adapter.blocks.0.cross_attn.q_proj.weight": (8, 8),
    "blocks.0.self_attn.q_proj.weight": (8, 8),
    "x_embedder.proj.1.weight": (8, 8),
}
ERNIE_IMAGE: Shapes = {"layers.0.adaLN_sa_ln.weight": (16,), "layers.0.self_attention.qkv.weight": (48, 16)}
WAN: Shapes = {
    "patch_embedding.weight": (16, 16, 1, 2, 2),
    "blocks.0.cross_attn.norm_k.weight": (16,),
    "blocks.0.self_attn.q.weight": (16, 16),
}
