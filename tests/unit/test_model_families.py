"""Model folders of every family stable-diffusion.cpp lists: files named as their publishers
name them -> family, binding constructor arguments and the defaults chosen.

The files are synthetic (tests/support/family_files.py): real tensor names, tiny or sparse
shapes; nothing here runs sd.cpp. The runs on real sd.cpp (SD1 and a split FLUX.1) are in
tests/system. SD3.x and Z-Image in particular are mapped here and never run anywhere: their
dimensions are hard-coded in sd.cpp (mmdit.hpp: depth >= 24 and a 36864-position embedding;
z_image.hpp: every dimension fixed, a Qwen3 text encoder), so they cannot be made tiny."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pytest

from llmlb_node.stable_diffusion.models.families import FAMILIES, FamilyName
from llmlb_node.stable_diffusion.models.model_folder import (
    ModelFolder,
    ModelProfile,
    choose_weights,
    inspect_folder,
    log_scan_changes,
    read_profile,
    scan_models,
    weight_files,
)
from llmlb_node.stable_diffusion.models.tensor_index import (
    UnreadableWeights,
    classify_file,
    read_tensor_index,
)
from llmlb_plugins.images.protocol import MAX_EDIT_IMAGES
from tests.support import family_files as ff

GGUF_ARCH = {
    "Qwen2.5-VL-7B-Instruct-Q8_0.gguf": "qwen2vl",
    "Qwen2.5-VL-7B-Instruct.mmproj-Q8_0.gguf": "clip",
    "Qwen3-4B-Instruct-2507-Q4_K_M.gguf": "qwen3",
    "Mistral-Small-3.2-24B-Instruct-2506-Q4_K_M.gguf": "llama",
    "t5-v1_1-xxl-encoder-Q8_0.gguf": "t5encoder",
}


def make_folder(root: Path, name: str, files: dict[str, ff.Shapes], toml: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, tensors in files.items():
        ff.write(folder / file_name, tensors, arch=GGUF_ARCH.get(Path(file_name).name, "flux"))
    if toml is not None:
        (folder / "model.toml").write_text(toml)
    return folder


@dataclass
class Case:
    id: str
    files: dict[str, ff.Shapes]
    family: str
    variant: str
    # binding argument -> file name
    kwargs: dict[str, str]
    defaults: dict[str, object] = field(default_factory=dict)
    mask_edits: bool = False
    max_ref_images: int = 0


FLUX_ENCODERS = {
    "ae.safetensors": ff.kl_vae(16),
    "clip_l.safetensors": ff.CLIP_L,
    "t5xxl_fp16.safetensors": ff.T5XXL,
}
FLUX_ARGS = {
    "vae_path": "ae.safetensors",
    "clip_l_path": "clip_l.safetensors",
    "t5xxl_path": "t5xxl_fp16.safetensors",
}
DEV = {"cfg_scale": 1.0, "guidance": 3.5, "steps": 20, "sampler": "euler", "native_size": "1024x1024"}
QWEN_FILES = {"qwen_image_vae.safetensors": ff.VIDEO_VAE}
QWEN_DEFAULTS = {"cfg_scale": 2.5, "sampler": "euler", "flow_shift": 3.0, "native_size": "1024x1024"}

CASES = [
    Case(
        "sd1",
        {"v1-5-pruned-emaonly.safetensors": ff.sd1_checkpoint()},
        "sd1",
        "",
        {"model_path": "v1-5-pruned-emaonly.safetensors"},
        {"steps": 20, "cfg_scale": 7.0, "sampler": "euler_a", "native_size": "512x512", "guidance": None},
        mask_edits=True,
    ),
    Case(
        "sd1-inpaint",
        {"sd-v1-5-inpainting.safetensors": ff.sd1_checkpoint(9)},
        "sd1_inpaint",
        "",
        {"model_path": "sd-v1-5-inpainting.safetensors"},
        {"native_size": "512x512"},
        mask_edits=True,
    ),
    Case(
        "sd2",
        {"v2-1_768-ema-pruned.safetensors": ff.sd2_checkpoint()},
        "sd2",
        "",
        {"model_path": "v2-1_768-ema-pruned.safetensors"},
        {"native_size": "768x768", "cfg_scale": 7.0},
        mask_edits=True,
    ),
    Case(
        "sd-turbo",
        {"sd_turbo.safetensors": ff.sd2_checkpoint()},
        "sd2",
        "turbo",
        {"model_path": "sd_turbo.safetensors"},
        {"native_size": "512x512", "cfg_scale": 1.0, "steps": 4},
        mask_edits=True,
    ),
    Case(
        "sd2-inpaint",
        {"512-inpainting-ema.safetensors": ff.sd2_checkpoint(9)},
        "sd2_inpaint",
        "",
        {"model_path": "512-inpainting-ema.safetensors"},
        mask_edits=True,
    ),
    Case(
        "sdxl with its fp16-fix VAE",
        {"sd_xl_base_1.0.safetensors": ff.sdxl_checkpoint(), "sdxl_vae-fp16-fix.safetensors": ff.kl_vae(4)},
        "sdxl",
        "",
        {"model_path": "sd_xl_base_1.0.safetensors", "vae_path": "sdxl_vae-fp16-fix.safetensors"},
        {"native_size": "1024x1024", "sampler": "euler_a"},
        mask_edits=True,
    ),
    Case(
        "sdxl-inpaint",
        {"sd_xl_base_1.0_inpainting_0.1.safetensors": ff.sdxl_checkpoint(9)},
        "sdxl_inpaint",
        "",
        {"model_path": "sd_xl_base_1.0_inpainting_0.1.safetensors"},
        mask_edits=True,
    ),
    Case(
        "ssd1b",
        {"SSD-1B-A1111.safetensors": ff.sdxl_checkpoint(middle=False)},
        "sdxl",
        "ssd1b",
        {"model_path": "SSD-1B-A1111.safetensors"},
        {"native_size": "1024x1024"},
        mask_edits=True,
    ),
    Case(
        "sd3.5 large + clip_l + clip_g + t5xxl",
        {
            "sd3.5_large.safetensors": ff.mmdit(),
            "clip_l.safetensors": ff.CLIP_L,
            "clip_g.safetensors": ff.CLIP_G,
            "t5xxl_fp16.safetensors": ff.T5XXL,
        },
        "sd3",
        "",
        {
            "model_path": "sd3.5_large.safetensors",
            "clip_l_path": "clip_l.safetensors",
            "clip_g_path": "clip_g.safetensors",
            "t5xxl_path": "t5xxl_fp16.safetensors",
        },
        {"cfg_scale": 4.5, "sampler": "euler", "native_size": "1024x1024", "flow_shift": 3.0, "steps": 28},
    ),
    Case(
        "sd3 medium with encoders inside",
        {"sd3_medium_incl_clips_t5xxlfp16.safetensors": ff.mmdit(with_text=True)},
        "sd3",
        "",
        {"model_path": "sd3_medium_incl_clips_t5xxlfp16.safetensors"},
        {"cfg_scale": 4.5},
    ),
    Case(
        "flux schnell",
        {"flux1-schnell.safetensors": ff.flux(guidance=False), **FLUX_ENCODERS},
        "flux",
        "schnell",
        {"diffusion_model_path": "flux1-schnell.safetensors", **FLUX_ARGS},
        {"cfg_scale": 1.0, "guidance": 3.5, "steps": 4, "sampler": "euler", "native_size": "1024x1024"},
    ),
    Case(
        "flux dev",
        {"flux1-dev.safetensors": ff.flux(), **FLUX_ENCODERS},
        "flux",
        "dev",
        {"diffusion_model_path": "flux1-dev.safetensors", **FLUX_ARGS},
        DEV,
    ),
    Case(
        "flux dev gguf with a gguf t5 (leejet/FLUX.1-dev-gguf, city96 t5 encoder)",
        {
            "flux1-dev-q8_0.gguf": ff.flux(prefix=ff.DM),
            "ae.safetensors": ff.kl_vae(16),
            "clip_l.safetensors": ff.CLIP_L,
            "t5-v1_1-xxl-encoder-Q8_0.gguf": ff.T5XXL_GGUF,
        },
        "flux",
        "dev",
        {
            "diffusion_model_path": "flux1-dev-q8_0.gguf",
            "vae_path": "ae.safetensors",
            "clip_l_path": "clip_l.safetensors",
            "t5xxl_path": "t5-v1_1-xxl-encoder-Q8_0.gguf",
        },
        DEV,
    ),
    Case(
        "flux schnell gguf, the name alone says nothing",
        {"flux1-q4_0.gguf": ff.flux(guidance=False), **FLUX_ENCODERS},
        "flux",
        "schnell",
        {"diffusion_model_path": "flux1-q4_0.gguf", **FLUX_ARGS},
        {"steps": 4},
    ),
    Case(
        "flux kontext",
        {"flux1-kontext-dev.safetensors": ff.flux(), **FLUX_ENCODERS},
        "flux_kontext",
        "dev",
        {"diffusion_model_path": "flux1-kontext-dev.safetensors", **FLUX_ARGS},
        {"cfg_scale": 1.0, "guidance": 2.5, "sampler": "euler"},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "flux fill",
        {"flux1-fill-dev.safetensors": ff.flux(img_in=384), **FLUX_ENCODERS},
        "flux_fill",
        "",
        {"diffusion_model_path": "flux1-fill-dev.safetensors", **FLUX_ARGS},
        {"guidance": 30.0, "cfg_scale": 1.0},
        mask_edits=True,
    ),
    Case(
        "flux controls (canny)",
        {"flux1-canny-dev.safetensors": ff.flux(img_in=128), **FLUX_ENCODERS},
        "flux_controls",
        "",
        {"diffusion_model_path": "flux1-canny-dev.safetensors", **FLUX_ARGS},
        {"cfg_scale": 1.0},
    ),
    Case(
        "flex.2",
        {"Flex.2-preview.safetensors": ff.flux(img_in=196), **FLUX_ENCODERS},
        "flex2",
        "",
        {"diffusion_model_path": "Flex.2-preview.safetensors", **FLUX_ARGS},
        {"guidance": 3.5},
        mask_edits=True,
    ),
    Case(
        "chroma",
        {
            "chroma-unlocked-v40-q8_0.gguf": ff.flux(guidance=False, chroma=True),
            "ae.safetensors": ff.kl_vae(16),
            "t5xxl_fp16.safetensors": ff.T5XXL,
        },
        "chroma",
        "",
        {
            "diffusion_model_path": "chroma-unlocked-v40-q8_0.gguf",
            "vae_path": "ae.safetensors",
            "t5xxl_path": "t5xxl_fp16.safetensors",
        },
        {"cfg_scale": 4.0, "sampler": "euler", "guidance": None},
    ),
    Case(
        "chroma radiance (pixel space: no VAE)",
        {
            "Chroma1-Radiance-v0.4-Q8_0.gguf": ff.flux(guidance=False, chroma=True, radiance=True),
            "t5xxl_fp16.safetensors": ff.T5XXL,
        },
        "chroma_radiance",
        "",
        {"diffusion_model_path": "Chroma1-Radiance-v0.4-Q8_0.gguf", "t5xxl_path": "t5xxl_fp16.safetensors"},
        {"cfg_scale": 4.0, "sampler": "euler"},
    ),
    Case(
        "flux.2 dev",
        {
            "flux2-dev-Q4_K_S.gguf": ff.flux2(klein=False),
            "flux2_ae.safetensors": ff.kl_vae(32),
            "Mistral-Small-3.2-24B-Instruct-2506-Q4_K_M.gguf": ff.GGUF_LLM,
        },
        "flux2",
        "",
        {
            "diffusion_model_path": "flux2-dev-Q4_K_S.gguf",
            "vae_path": "flux2_ae.safetensors",
            "llm_path": "Mistral-Small-3.2-24B-Instruct-2506-Q4_K_M.gguf",
        },
        {"cfg_scale": 1.0, "sampler": "euler"},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "flux.2 klein 4b",
        {
            "flux-2-klein-4b.safetensors": ff.flux2(klein=True),
            "flux2_ae.safetensors": ff.kl_vae(32),
            "qwen_3_4b.safetensors": ff.hf_llm(qwen3=True),
        },
        "flux2_klein",
        "distilled",
        {
            "diffusion_model_path": "flux-2-klein-4b.safetensors",
            "vae_path": "flux2_ae.safetensors",
            "llm_path": "qwen_3_4b.safetensors",
        },
        {"cfg_scale": 1.0, "steps": 4},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "flux.2 klein base 4b",
        {
            "flux-2-klein-base-4b.safetensors": ff.flux2(klein=True),
            "flux2_ae.safetensors": ff.kl_vae(32),
            "qwen_3_4b.safetensors": ff.hf_llm(qwen3=True),
        },
        "flux2_klein",
        "base",
        {
            "diffusion_model_path": "flux-2-klein-base-4b.safetensors",
            "vae_path": "flux2_ae.safetensors",
            "llm_path": "qwen_3_4b.safetensors",
        },
        {"cfg_scale": 4.0, "steps": 20},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "qwen-image (Comfy-Org split files)",
        {
            "qwen_image_fp8_e4m3fn.safetensors": ff.QWEN_IMAGE,
            "qwen_2.5_vl_7b_fp8_scaled.safetensors": ff.hf_llm(vision=True),
            **QWEN_FILES,
        },
        "qwen_image",
        "",
        {
            "diffusion_model_path": "qwen_image_fp8_e4m3fn.safetensors",
            "llm_path": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
            "vae_path": "qwen_image_vae.safetensors",
        },
        QWEN_DEFAULTS,
    ),
    Case(
        "qwen-image gguf + gguf LLM",
        {
            "qwen-image-Q8_0.gguf": ff.QWEN_IMAGE,
            "Qwen2.5-VL-7B-Instruct-Q8_0.gguf": ff.GGUF_LLM,
            **QWEN_FILES,
        },
        "qwen_image",
        "",
        {
            "diffusion_model_path": "qwen-image-Q8_0.gguf",
            "llm_path": "Qwen2.5-VL-7B-Instruct-Q8_0.gguf",
            "vae_path": "qwen_image_vae.safetensors",
        },
        QWEN_DEFAULTS,
    ),
    Case(
        "qwen-image-edit 2509 with the LLM's vision tower",
        {
            "Qwen-Image-Edit-2509-Q4_K_S.gguf": ff.QWEN_IMAGE,
            "Qwen2.5-VL-7B-Instruct-Q8_0.gguf": ff.GGUF_LLM,
            "Qwen2.5-VL-7B-Instruct.mmproj-Q8_0.gguf": ff.GGUF_MMPROJ,
            **QWEN_FILES,
        },
        "qwen_image_edit",
        "",
        {
            "diffusion_model_path": "Qwen-Image-Edit-2509-Q4_K_S.gguf",
            "llm_path": "Qwen2.5-VL-7B-Instruct-Q8_0.gguf",
            "llm_vision_path": "Qwen2.5-VL-7B-Instruct.mmproj-Q8_0.gguf",
            "vae_path": "qwen_image_vae.safetensors",
        },
        {**QWEN_DEFAULTS, "qwen_image_zero_cond_t": False},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "qwen-image-edit 2511 (zero_cond_t on)",
        {
            "qwen-image-edit-2511-Q4_K_M.gguf": ff.QWEN_IMAGE,
            "qwen_2.5_vl_7b.safetensors": ff.hf_llm(vision=True),
            **QWEN_FILES,
        },
        "qwen_image_edit",
        "",
        {
            "diffusion_model_path": "qwen-image-edit-2511-Q4_K_M.gguf",
            "llm_path": "qwen_2.5_vl_7b.safetensors",
            "vae_path": "qwen_image_vae.safetensors",
        },
        {"qwen_image_zero_cond_t": True},
        max_ref_images=MAX_EDIT_IMAGES,
    ),
    Case(
        "z-image turbo (mapped, not run)",
        {
            "z_image_turbo-Q3_K.gguf": ff.Z_IMAGE,
            "ae.safetensors": ff.kl_vae(16),
            "Qwen3-4B-Instruct-2507-Q4_K_M.gguf": ff.GGUF_LLM,
        },
        "z_image",
        "turbo",
        {
            "diffusion_model_path": "z_image_turbo-Q3_K.gguf",
            "vae_path": "ae.safetensors",
            "llm_path": "Qwen3-4B-Instruct-2507-Q4_K_M.gguf",
        },
        {"cfg_scale": 1.0, "steps": 8, "sampler": "euler", "flow_shift": 3.0},
    ),
    Case(
        "z-image base",
        {
            "z_image_bf16.safetensors": ff.Z_IMAGE,
            "ae.safetensors": ff.kl_vae(16),
            "qwen_3_4b.safetensors": ff.hf_llm(qwen3=True),
        },
        "z_image",
        "base",
        {
            "diffusion_model_path": "z_image_bf16.safetensors",
            "vae_path": "ae.safetensors",
            "llm_path": "qwen_3_4b.safetensors",
        },
        {"cfg_scale": 5.0, "steps": 20},
    ),
    Case(
        "ovis-image",
        {
            "ovis_image_bf16.safetensors": ff.OVIS_IMAGE,
            "ae.safetensors": ff.kl_vae(16),
            "ovis_2.5.safetensors": ff.hf_llm(qwen3=True),
        },
        "ovis_image",
        "",
        {
            "diffusion_model_path": "ovis_image_bf16.safetensors",
            "vae_path": "ae.safetensors",
            "llm_path": "ovis_2.5.safetensors",
        },
        {"cfg_scale": 5.0},
    ),
    Case(
        "anima",
        {
            "anima-preview.safetensors": ff.ANIMA,
            "qwen_image_vae.safetensors": ff.VIDEO_VAE,
            "qwen_3_06b_base.safetensors": ff.hf_llm(qwen3=True),
        },
        "anima",
        "",
        {
            "diffusion_model_path": "anima-preview.safetensors",
            "vae_path": "qwen_image_vae.safetensors",
            "llm_path": "qwen_3_06b_base.safetensors",
        },
        {"cfg_scale": 6.0, "sampler": "euler"},
    ),
    Case(
        "ernie-image turbo",
        {
            "ernie-image-turbo.safetensors": ff.ERNIE_IMAGE,
            "flux2_ae.safetensors": ff.kl_vae(32),
            "ministral-3-3b.safetensors": ff.hf_llm(),
        },
        "ernie_image",
        "turbo",
        {
            "diffusion_model_path": "ernie-image-turbo.safetensors",
            "vae_path": "flux2_ae.safetensors",
            "llm_path": "ministral-3-3b.safetensors",
        },
        {"cfg_scale": 1.0, "steps": 8, "flow_shift": 4.0},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_publisher_folder_maps_to_family_arguments_and_defaults(tmp_path: Path, case: Case) -> None:
    folder = make_folder(tmp_path, "m", case.files)
    model = inspect_folder(folder)
    assert (model.family.name, model.family.variant) == (case.family, case.variant)
    [weights] = model.weights
    kwargs = model.load_kwargs(weights)
    paths = {k: Path(v).name for k, v in kwargs.items() if k.endswith("_path")}
    assert paths == case.kwargs
    assert kwargs["vae_decode_only"] is False
    profile = model.profile
    assert profile.family == case.family
    for key, value in case.defaults.items():
        assert getattr(profile, key) == value, key
    assert model.family.mask_edits is case.mask_edits
    assert model.family.max_ref_images == case.max_ref_images
    assert model.family.loras and model.family.generates_images
    # The same folder through the scan: served, with nothing reported.
    result = scan_models(tmp_path)
    assert [m.id for m in result.models] == ["m"] and result.problems == {}


def test_every_image_family_sd_cpp_lists_has_a_mapping_case() -> None:
    assert set(get_args(FamilyName)) == set(FAMILIES)  # what model.toml's family accepts
    mapped = {c.family for c in CASES} | {"wan"}  # wan: test_video_family_is_not_served
    unmapped = set(FAMILIES) - mapped - {"sd1_pix2pix", "sdxl_pix2pix"}
    assert not unmapped


def test_pix2pix_checkpoints_are_their_own_families(tmp_path: Path) -> None:
    sd1 = inspect_folder(
        make_folder(tmp_path, "a", {"instruct-pix2pix-00-22000.safetensors": ff.sd1_checkpoint(8)})
    )
    sdxl = inspect_folder(make_folder(tmp_path, "b", {"sdxl-ip2p.safetensors": ff.sdxl_checkpoint(8)}))
    assert (sd1.family.name, sdxl.family.name) == ("sd1_pix2pix", "sdxl_pix2pix")


def test_video_family_is_not_served(tmp_path: Path) -> None:
    make_folder(
        tmp_path,
        "wan",
        {
            "wan2.1_t2v_1.3B_fp16.safetensors": ff.WAN,
            "wan_2.1_vae.safetensors": ff.VIDEO_VAE,
            "umt5_xxl_fp16.safetensors": ff.T5XXL,
        },
    )
    result = scan_models(tmp_path)
    assert result.models == []
    assert "video" in result.problems["wan"]


# --------------------------------------------------------------------------- SD1 as before


DEMO_TOML = """\
description = "synthetic SD1 tiny U-Net (random weights)"
steps = 2
cfg_scale = 1.0
sampler = "euler"
native_size = "64x64"
taesd = "taesd.safetensors"
"""


def test_single_file_sd1_folder_keeps_todays_profile_and_arguments(tmp_path: Path) -> None:
    """The demo's layout (checkpoint without a VAE + TAESD + model.toml) maps as before."""
    folder = make_folder(
        tmp_path,
        "demo",
        {"model.safetensors": ff.sd1_checkpoint(vae=False), "taesd.safetensors": ff.taesd()},
        DEMO_TOML,
    )
    [model] = scan_models(tmp_path).models
    p = model.profile
    assert (p.steps, p.cfg_scale, p.sampler, p.scheduler, p.native_size, p.native_wh) == (
        2,
        1.0,
        "euler",
        None,
        "64x64",
        (64, 64),
    )
    assert (p.description, p.negative_prompt, p.taesd, p.vae, p.weights) == (
        "synthetic SD1 tiny U-Net (random weights)",
        "",
        "taesd.safetensors",
        None,
        None,
    )
    assert model.weights == (folder / "model.safetensors",)
    kwargs = model.load_kwargs(folder / "model.safetensors")
    assert kwargs["model_path"] == str(folder / "model.safetensors")
    assert kwargs["taesd_path"] == str(folder / "taesd.safetensors")
    assert kwargs["tae_preview_only"] is False  # no VAE: TAESD decodes
    assert not any(k in kwargs for k in ("diffusion_model_path", "vae_path", "n_threads", "verbose"))
    assert p.preview_method == "tae"
    # The helpers of the one-file layout still answer.
    assert read_profile(folder) == p
    assert weight_files(folder, p) == model.weights
    assert model.aux(p.taesd) == folder / "taesd.safetensors"
    assert "family sd1" in model.summary and "taesd taesd.safetensors" in model.summary


def test_default_profile_is_sd1() -> None:
    p = ModelProfile()
    assert (p.steps, p.cfg_scale, p.sampler, p.native_size, p.family) == (
        20,
        7.0,
        "euler_a",
        "512x512",
        "sd1",
    )


def test_bare_model_folder_still_constructs() -> None:
    """bench/node_bench.py builds a ModelFolder by hand from a profile and weights."""
    folder = ModelFolder(
        id="x", path=Path("/m/x"), profile=ModelProfile(), weights=(Path("/m/x/w.safetensors"),)
    )
    assert folder.family.name == "sd1"
    assert folder.load_kwargs(Path("/m/x/w.safetensors"))["model_path"] == "/m/x/w.safetensors"


# --------------------------------------------------------------------------- the issue's folder


def test_the_issues_flux_folder_serves_flux_not_the_autoencoder(tmp_path: Path) -> None:
    """flux1-schnell + clip_l + ae (no t5xxl) was advertised with ae.safetensors as weights."""
    folder = make_folder(
        tmp_path,
        "flux",
        {
            "flux1-schnell.safetensors": ff.flux(guidance=False),
            "clip_l.safetensors": ff.CLIP_L,
            "ae.safetensors": ff.kl_vae(16),
        },
    )
    [model] = scan_models(tmp_path).models
    assert model.weights == (folder / "flux1-schnell.safetensors",)
    kwargs = model.load_kwargs(model.weights[0])
    assert kwargs["diffusion_model_path"].endswith("flux1-schnell.safetensors")
    assert "t5xxl_path" not in kwargs and "model_path" not in kwargs
    assert any("t5xxl" in note for note in model.notes)  # runs on clip_l alone, says so


def test_dual_format_flux_keeps_choose_weights(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "dual",
        {"flux1-dev.safetensors": ff.flux(), "flux1-dev-Q8_0.gguf": ff.flux(), **FLUX_ENCODERS},
    )
    model = inspect_folder(folder)
    assert {p.name for p in model.weights} == {"flux1-dev.safetensors", "flux1-dev-Q8_0.gguf"}
    cpu = choose_weights(model, accelerator=False, free_memory_bytes=None)
    gpu = choose_weights(model, accelerator=True, free_memory_bytes=None)
    assert (cpu.path.suffix, gpu.path.suffix) == (".gguf", ".safetensors")
    for choice in (cpu, gpu):
        assert model.load_kwargs(choice.path)["diffusion_model_path"] == str(choice.path)


def test_component_files_in_comfyui_subfolders_are_found(tmp_path: Path) -> None:
    make_folder(
        tmp_path,
        "qwen",
        {
            "diffusion_models/qwen_image_fp8_e4m3fn.safetensors": ff.QWEN_IMAGE,
            "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors": ff.hf_llm(vision=True),
            "vae/qwen_image_vae.safetensors": ff.VIDEO_VAE,
        },
    )
    [model] = scan_models(tmp_path).models
    assert model.family.name == "qwen_image"
    assert model.profile.llm == "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"
    assert model.profile.vae == "vae/qwen_image_vae.safetensors"


# --------------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"flux1-dev.safetensors": ff.flux(), "ae.safetensors": ff.kl_vae(16)},
            "flux (dev): no text encoder: add clip_l.safetensors and/or t5xxl_fp16.safetensors",
        ),
        (
            {"flux1-dev.safetensors": ff.flux(), "clip_l.safetensors": ff.CLIP_L},
            "flux (dev): no autoencoder (VAE): add ae.safetensors",
        ),
        (
            {
                "flux1-dev.safetensors": ff.flux(),
                "clip_l.safetensors": ff.CLIP_L,
                "vae.safetensors": ff.kl_vae(4),
            },
            "vae.safetensors is a kl4 autoencoder, the family needs kl16",
        ),
        (
            {"qwen_image_fp8_e4m3fn.safetensors": ff.QWEN_IMAGE, **QWEN_FILES},
            "no LLM text encoder: add qwen_2.5_vl_7b",
        ),
        (
            {"chroma-unlocked-v40.safetensors": ff.flux(guidance=False, chroma=True), **FLUX_ENCODERS}
            | {"t5xxl_fp16.safetensors": ff.CLIP_G},
            "",
        ),
        (
            {"sd3.5_large.safetensors": ff.mmdit()},
            "sd3: no text encoder: add clip_l.safetensors, clip_g.safetensors and t5xxl_fp16.safetensors",
        ),
        (
            {"z_image_turbo-Q3_K.gguf": ff.Z_IMAGE, "qwen_3_4b.safetensors": ff.hf_llm(qwen3=True)},
            "no autoencoder",
        ),
        ({"model.safetensors": ff.sd1_checkpoint(vae=False)}, "sd1: no autoencoder"),
        (
            {
                "sd_xl_base_unet.safetensors": ff.unet(xl=True),
                "clip_l.safetensors": ff.CLIP_L,
                "sdxl_vae.safetensors": ff.kl_vae(4),
            },
            "no CLIP-G text encoder: add clip_g.safetensors",
        ),
        (FLUX_ENCODERS, "no diffusion model, only ae.safetensors (vae), clip_l.safetensors (clip_l)"),
        ({}, "no weights files"),
        ({"pixel-art.safetensors": ff.LORA, "flux-style.safetensors": ff.FLUX_LORA}, "holds only LoRAs"),
        (
            {
                "flux1-dev.safetensors": ff.flux(),
                "flux1-schnell.safetensors": ff.flux(guidance=False),
                **FLUX_ENCODERS,
            },
            "several different models (flux1-dev.safetensors (flux (dev)), "
            "flux1-schnell.safetensors (flux (schnell)))",
        ),
    ],
)
def test_a_folder_that_cannot_load_is_a_problem_that_says_what_to_add(
    tmp_path: Path, files: dict[str, ff.Shapes], expected: str
) -> None:
    make_folder(tmp_path, "m", files)
    result = scan_models(tmp_path)
    if not expected:  # chroma with a CLIP-G named t5xxl: no T5 at all
        assert "no T5 text encoder: add t5xxl_fp16.safetensors" in result.problems["m"]
        return
    assert result.models == []
    assert expected in result.problems["m"], result.problems


def test_truncated_or_garbage_weights_are_problems_not_exceptions(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "cut", {"flux1-dev.safetensors": ff.flux(), **FLUX_ENCODERS})
    main = folder / "flux1-dev.safetensors"
    main.write_bytes(main.read_bytes()[:40])  # an interrupted download: header cut short
    make_folder(tmp_path, "garbage", {})
    (tmp_path / "garbage" / "model.safetensors").write_bytes(b"\xff" * 64)
    make_folder(tmp_path, "huge-header", {})
    (tmp_path / "huge-header" / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    make_folder(tmp_path, "short-data", {})
    whole = ff.write_safetensors(tmp_path / "short-data" / "model.safetensors", ff.sd1_checkpoint())
    with whole.open("r+b") as f:
        f.truncate(whole.stat().st_size - 1)
    gguf = make_folder(tmp_path, "gguf", {"flux1-dev-Q8_0.gguf": ff.flux(), **FLUX_ENCODERS})
    data = (gguf / "flux1-dev-Q8_0.gguf").read_bytes()
    (gguf / "flux1-dev-Q8_0.gguf").write_bytes(data[: len(data) // 3])
    header_cut = make_folder(tmp_path, "gguf-header", {"Qwen2.5-VL-7B-Instruct-Q8_0.gguf": ff.GGUF_LLM})
    data = (header_cut / "Qwen2.5-VL-7B-Instruct-Q8_0.gguf").read_bytes()
    (header_cut / "model.gguf").write_bytes(data[:200])
    make_folder(tmp_path, "not-gguf", {})
    (tmp_path / "not-gguf" / "model.gguf").write_bytes(b"GGML" + b"\0" * 60)

    result = scan_models(tmp_path)
    assert result.models == []
    assert "flux1-dev.safetensors: unreadable: truncated" in result.problems["cut"]
    assert "not JSON" in result.problems["garbage"] or "out of bounds" in result.problems["garbage"]
    assert "out of bounds" in result.problems["huge-header"]
    assert "interrupted download" in result.problems["short-data"]
    assert "flux1-dev-Q8_0.gguf: unreadable: truncated: its tensors need" in result.problems["gguf"]
    assert "model.gguf: unreadable: truncated: a GGUF array" in result.problems["gguf-header"]
    assert "bad magic" in result.problems["not-gguf"]
    with pytest.raises(UnreadableWeights):
        read_tensor_index(main)


def test_problems_and_summaries_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_folder(tmp_path, "flux", {"flux1-schnell.safetensors": ff.flux(guidance=False), **FLUX_ENCODERS})
    make_folder(tmp_path, "broken", {"ae.safetensors": ff.kl_vae(16)})
    with caplog.at_level(logging.INFO, logger="llmlb.node.sd"):
        first = scan_models(tmp_path)
        log_scan_changes(None, first)
        log_scan_changes(first, scan_models(tmp_path))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith(
        "model flux: family flux (FLUX.1, schnell), diffusion flux1-schnell.safetensors, "
        "clip_l clip_l.safetensors"
    )
    assert "vae ae.safetensors" in lines[0]
    assert lines[1].startswith("model folder broken is not served: no diffusion model")


# --------------------------------------------------------------------------- LoRAs


def test_loras_are_listed_per_model_never_advertised(tmp_path: Path) -> None:
    models = tmp_path / "models"
    flux = make_folder(
        models,
        "flux",
        {
            "flux1-dev.safetensors": ff.flux(),
            **FLUX_ENCODERS,
            "realism_lora_comfy_converted.safetensors": ff.FLUX_LORA,
            "loras/own-style.safetensors": ff.FLUX_LORA,
        },
    )
    make_folder(models, "loras", {"pixel-art.safetensors": ff.LORA, "bad name!.safetensors": ff.LORA})
    node_loras = make_folder(tmp_path, "node-loras", {"node-wide.safetensors": ff.LORA})

    by_default = scan_models(models)
    [model] = by_default.models
    assert by_default.problems == {}  # loras/ is the node's LoRA folder, not a broken model
    assert model.weights == (flux / "flux1-dev.safetensors",)
    assert set(model.loras) == {"pixel-art", "realism_lora_comfy_converted", "own-style"}
    assert model.loras["own-style"] == flux / "loras" / "own-style.safetensors"

    configured = scan_models(models, lora_dir=node_loras)
    [model] = configured.models
    assert set(model.loras) == {"node-wide", "realism_lora_comfy_converted", "own-style"}
    assert configured.problems == {}
    assert classify_file(flux / "realism_lora_comfy_converted.safetensors").role == "lora"


# --------------------------------------------------------------------------- model.toml


def test_model_toml_names_every_component_and_engine_option(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "custom",
        {
            "unet.safetensors": ff.flux(),
            "text-a.safetensors": ff.CLIP_L,
            "text-b.safetensors": ff.T5XXL,
            "decoder.safetensors": ff.kl_vae(16),
            "taef1.safetensors": ff.taesd(16),
        },
        """\
family = "flux_kontext"
diffusion_model = "unet.safetensors"
clip_l = "text-a.safetensors"
t5xxl = "text-b.safetensors"
vae = "decoder.safetensors"
taesd = "taef1.safetensors"
steps = 12
guidance = 2.0
flash_attn = true
offload_params_to_cpu = true
keep_clip_on_cpu = true
keep_vae_on_cpu = true
vae_tiling = true
wtype = "q8_0"
cache_mode = "cachedit"
preview_method = "vae"
""",
    )
    model = inspect_folder(folder)
    assert model.family.name == "flux_kontext" and model.family.max_ref_images == MAX_EDIT_IMAGES
    kwargs = model.load_kwargs(folder / "unet.safetensors")
    assert {k: Path(v).name for k, v in kwargs.items() if k.endswith("_path")} == {
        "diffusion_model_path": "unet.safetensors",
        "clip_l_path": "text-a.safetensors",
        "t5xxl_path": "text-b.safetensors",
        "vae_path": "decoder.safetensors",
        "taesd_path": "taef1.safetensors",
    }
    assert kwargs["flash_attn"] and kwargs["offload_params_to_cpu"] and kwargs["keep_clip_on_cpu"]
    assert kwargs["keep_vae_on_cpu"] and kwargs["wtype"] == "q8_0" and kwargs["tae_preview_only"] is True
    p = model.profile
    assert (p.steps, p.guidance, p.cfg_scale, p.vae_tiling, p.cache_mode, p.preview_method) == (
        12,
        2.0,
        1.0,
        True,
        "cachedit",
        "vae",
    )
    assert (p.diffusion_model, p.clip_l, p.taesd) == (
        "unet.safetensors",
        "text-a.safetensors",
        "taef1.safetensors",
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'vae = "../other/ae.safetensors"',
            "vae = '../other/ae.safetensors': name a file inside the model folder",
        ),
        ('clip_l = "/etc/passwd"', "clip_l = '/etc/passwd': name a file inside the model folder"),
        ('t5xxl = "sub/../../x.safetensors"', "name a file inside the model folder"),
        ('vae = "missing.safetensors"', "vae = 'missing.safetensors': no such file"),
        ('vae = "clip_l.safetensors"', "vae = 'clip_l.safetensors' is a clip_l file, not vae"),
        ('weights = "ae.safetensors"', "weights = 'ae.safetensors': autoencoder, not a model"),
        ("steps = 0", "Expected `int` >= 1 - at `$.steps`"),
        ("clip = 'x'", "Object contains unknown field `clip`"),
        ('cache_mode = "fast"', "at `$.cache_mode`"),
        ('family = "dalle"', "at `$.family`"),
        ("steps = [", "model.toml"),
        ('model = "flux1-dev.safetensors"\nweights = "flux1-dev.safetensors"', "set only one of weights"),
    ],
)
def test_bad_model_toml_is_a_one_line_problem_naming_file_and_key(
    tmp_path: Path, toml: str, expected: str
) -> None:
    make_folder(tmp_path / "other", "x", {"ae.safetensors": ff.kl_vae(16)})
    make_folder(tmp_path, "m", {"flux1-dev.safetensors": ff.flux(), **FLUX_ENCODERS}, toml)
    problem = scan_models(tmp_path).problems["m"]
    assert expected in problem and "\n" not in problem
    assert str(tmp_path / "m" / "model.toml") in problem or "several" in problem


def test_explicit_model_key_makes_a_single_file_checkpoint(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "sd3",
        {"sd3.5_large.safetensors": ff.mmdit(), "clip_l.safetensors": ff.CLIP_L},
        'model = "sd3.5_large.safetensors"\nsampler = "dpm++2m"\nflow_shift = 2.5\n',
    )
    model = inspect_folder(folder)
    kwargs = model.load_kwargs(folder / "sd3.5_large.safetensors")
    assert kwargs["model_path"].endswith("sd3.5_large.safetensors") and "diffusion_model_path" not in kwargs
    assert (model.profile.sampler, model.profile.flow_shift, model.profile.model) == (
        "dpm++2m",
        2.5,
        "sd3.5_large.safetensors",
    )
    assert any("clip_g" in n for n in model.notes) and any("t5xxl" in n for n in model.notes)


def test_gguf_headers_are_read_without_their_vocabulary(tmp_path: Path) -> None:
    """llama.cpp-style GGUFs (an LLM with a tokenizer array, its mmproj, a T5 encoder): the
    architecture comes from the header, the tensors from the tensor infos."""
    llm = ff.write_gguf(tmp_path / "Qwen2.5-VL-7B-Instruct-Q8_0.gguf", ff.GGUF_LLM, arch="qwen2vl")
    mmproj = ff.write_gguf(tmp_path / "mmproj.gguf", ff.GGUF_MMPROJ, arch="clip")
    t5 = ff.write_gguf(tmp_path / "t5.gguf", ff.T5XXL_GGUF, arch="t5encoder")
    index = read_tensor_index(llm)
    assert index.metadata["general.architecture"] == "qwen2vl"
    assert index.shapes["token_embd.weight"] == (16, 8) and index.dtypes["token_embd.weight"] == "F16"
    assert classify_file(llm).role == "llm" and "qwen2vl" in classify_file(llm).detail
    assert (classify_file(mmproj).role, classify_file(t5).role) == ("llm_vision", "t5xxl")


def test_ckpt_is_classified_by_name_only(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "sd-v1-4.ckpt").write_bytes(b"PK\x03\x04 not unpickled")
    (folder / "vae-ft-mse.ckpt").write_bytes(b"PK")
    model = inspect_folder(folder)
    assert model.weights == (folder / "sd-v1-4.ckpt",)
    assert model.family.name == "sd1"
    kwargs = model.load_kwargs(folder / "sd-v1-4.ckpt")
    assert (
        Path(kwargs["model_path"]).name == "sd-v1-4.ckpt"
        and Path(kwargs["vae_path"]).name == "vae-ft-mse.ckpt"
    )
