"""The model families stable-diffusion.cpp runs: how each is recognised, what files it needs,
its defaults and what it can do.

Detection follows ``ModelLoader::get_sd_version()`` in the vendored ``src/model.cpp`` of
stable-diffusion.cpp (binding 0.4.7), read from the main weights' tensor names: the
``model.diffusion_model.`` prefix that sd.cpp adds is optional here (stripped before comparing).
Names (``kontext``, ``edit``, ``turbo``, ``base``) only pick a variant among tensor-identical
models; the tensors decide the family.

Defaults come from sd.cpp's per-family docs (``docs/*.md`` of the vendored source: the
``sd-cli`` examples' ``--cfg-scale``, ``--steps``, ``--sampling-method``, ``--flow-shift``,
``-W/-H``), from sd.cpp's own defaults (20 steps; ``default_flow_shift`` in
``stable-diffusion.cpp``; distilled guidance 3.5) and, where sd.cpp says nothing, from the
publisher's model card (cited per entry). ``None`` means "sd.cpp's own default".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from llmlb_node.stable_diffusion.models.tensor_index import TensorIndex
from llmlb_plugins.images.protocol import MAX_EDIT_IMAGES, Sampler, Scheduler

# Component roles a family can need, named like the binding's constructor arguments (without
# ``_path``). "text encoder inside the checkpoint" counts as having it.
ComponentRole = Literal["clip_l", "clip_g", "t5xxl", "llm", "llm_vision", "vae", "taesd"]
# How a family decodes latents: "kl4"/"kl16"/"kl32" = LDM KL autoencoder with that many latent
# channels (SD: 4; SD3, FLUX.1, Z-Image, Ovis: 16; FLUX.2, ERNIE: 32), "video" = the Wan/Qwen
# causal-3D autoencoder, "none" = pixel space (Chroma Radiance).
Latents = Literal["kl4", "kl16", "kl32", "video", "none"]


@dataclass(frozen=True)
class Need:
    """One requirement: any of ``roles`` satisfies it; ``fix`` says what to add."""

    roles: tuple[ComponentRole, ...]
    what: str
    fix: str


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    steps: int
    cfg_scale: float
    sampler: Sampler
    native_size: str
    guidance: float | None = None
    scheduler: Scheduler | None = None
    flow_shift: float | None = None
    # Edits with a mask (inpainting): UNet families (sd.cpp masks the latents) and the
    # inpainting DiTs (Flux Fill, Flex.2).
    mask_edits: bool = False
    # Reference images sd.cpp feeds the model (``ref_images``); 0: none. sd.cpp sets no limit,
    # OpenAI's edits take up to 16 images.
    max_ref_images: int = 0
    loras: bool = True
    generates_images: bool = True
    latents: Latents = "kl16"
    needs: tuple[Need, ...] = ()
    # Components that help but are not required: (roles, what is lost without them).
    recommends: tuple[tuple[tuple[ComponentRole, ...], str], ...] = ()
    variant: str = ""

    @property
    def uses(self) -> frozenset[str]:
        """The component roles this family passes to sd.cpp."""
        roles = {role for need in self.needs for role in need.roles}
        roles.update(role for roles_, _ in self.recommends for role in roles_)
        if self.latents != "none":
            roles.add("taesd")
        if "llm" in roles:
            roles.add("llm_vision")
        return frozenset(roles)

    @property
    def title(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name

    def with_variant(self, variant: str, **changes: object) -> Family:
        return dataclasses.replace(self, variant=variant, **changes)  # type: ignore[arg-type]


def _need_vae(fix: str) -> Need:
    return Need(("vae",), "no autoencoder (VAE)", fix)


FLUX_VAE = _need_vae("add ae.safetensors (black-forest-labs/FLUX.1-schnell)")
FLUX2_VAE = _need_vae("add flux2_ae.safetensors (black-forest-labs/FLUX.2-dev, vae/)")
QWEN_VAE = _need_vae("add qwen_image_vae.safetensors (Comfy-Org/Qwen-Image_ComfyUI, split_files/vae)")
UNET_VAE = Need(
    ("vae", "taesd"),
    "no autoencoder: the checkpoint holds none",
    "add a VAE file (e.g. vae-ft-mse-840000-ema-pruned.safetensors) or a TAESD file",
)
FLUX_TEXT = Need(
    ("clip_l", "t5xxl"),
    "no text encoder",
    "add clip_l.safetensors and/or t5xxl_fp16.safetensors (comfyanonymous/flux_text_encoders)",
)
# conditioner.hpp FluxCLIPEmbedder runs on either encoder and warns about the other.
FLUX_RECOMMENDS: tuple[tuple[tuple[ComponentRole, ...], str], ...] = (
    (("clip_l",), "clip_l.safetensors"),
    (("t5xxl",), "t5xxl_fp16.safetensors (without it prompts follow less closely)"),
)
T5_TEXT = Need(
    ("t5xxl",), "no T5 text encoder", "add t5xxl_fp16.safetensors (comfyanonymous/flux_text_encoders)"
)


def _need_llm(fix: str) -> Need:
    return Need(("llm",), "no LLM text encoder", fix)


def _unet(name: str, label: str, native: str, *text: Need) -> Family:
    # sd1/sd2/sdxl: sd.cpp's defaults (20 steps, euler_a; cfg 7 as in the webui); what
    # llmlb served before families existed.
    return Family(
        name=name,
        label=label,
        steps=20,
        cfg_scale=7.0,
        sampler="euler_a",
        native_size=native,
        mask_edits=True,
        latents="kl4",
        needs=(*text, UNET_VAE),
    )


SD1_TEXT = Need(("clip_l",), "no text encoder", "add the CLIP ViT-L text encoder (clip_l.safetensors)")
SD2_TEXT = Need(("clip_l",), "no text encoder", "use a checkpoint that includes its OpenCLIP text encoder")
SDXL_TEXT_L = Need(("clip_l",), "no CLIP-L text encoder", "add clip_l.safetensors")
SDXL_TEXT_G = Need(("clip_g",), "no CLIP-G text encoder", "add clip_g.safetensors")

FAMILY_LIST: tuple[Family, ...] = (
    _unet("sd1", "Stable Diffusion 1.x", "512x512", SD1_TEXT),
    _unet("sd1_inpaint", "Stable Diffusion 1.x inpainting", "512x512", SD1_TEXT),
    _unet("sd1_pix2pix", "Stable Diffusion 1.x InstructPix2Pix", "512x512", SD1_TEXT),
    # SD 2.x (768-v): 768x768; the 512 "base" and sd-turbo get 512 by name (see variants()).
    _unet("sd2", "Stable Diffusion 2.x", "768x768", SD2_TEXT),
    _unet("sd2_inpaint", "Stable Diffusion 2.x inpainting", "512x512", SD2_TEXT),
    _unet("sdxl", "Stable Diffusion XL", "1024x1024", SDXL_TEXT_L, SDXL_TEXT_G),
    _unet("sdxl_inpaint", "Stable Diffusion XL inpainting", "1024x1024", SDXL_TEXT_L, SDXL_TEXT_G),
    _unet("sdxl_pix2pix", "Stable Diffusion XL InstructPix2Pix", "1024x1024", SDXL_TEXT_L, SDXL_TEXT_G),
    # docs/sd3.md: --cfg-scale 4.5 --sampling-method euler, 1024x1024; flow_shift 3 is sd.cpp's
    # default for SD3; 28 steps: stabilityai/stable-diffusion-3.5-large model card.
    # sd.cpp's SD3CLIPEmbedder runs with any of the three encoders (missing ones are warned).
    Family(
        name="sd3",
        label="Stable Diffusion 3.x",
        steps=28,
        cfg_scale=4.5,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=3.0,
        needs=(
            Need(
                ("clip_l", "clip_g", "t5xxl"),
                "no text encoder",
                "add clip_l.safetensors, clip_g.safetensors and t5xxl_fp16.safetensors "
                "(Comfy-Org/stable-diffusion-3.5-fp8, text_encoders/)",
            ),
            _need_vae("use sd3.5_large.safetensors (it holds the VAE) or add the SD3 VAE"),
        ),
        recommends=(
            (("clip_l",), "clip_l.safetensors"),
            (("clip_g",), "clip_g.safetensors"),
            (("t5xxl",), "t5xxl_fp16.safetensors"),
        ),
    ),
    # docs/flux.md: --cfg-scale 1.0 --sampling-method euler; schnell --steps 4; distilled
    # guidance 3.5 is sd.cpp's default; FLUX.1 dev/schnell model cards: 1024x1024.
    Family(
        name="flux",
        label="FLUX.1",
        steps=20,
        cfg_scale=1.0,
        guidance=3.5,
        sampler="euler",
        native_size="1024x1024",
        needs=(FLUX_TEXT, FLUX_VAE),
        recommends=FLUX_RECOMMENDS,
    ),
    # docs/kontext.md: as dev, with -r reference images; guidance 2.5: black-forest-labs/
    # FLUX.1-Kontext-dev model card (FluxKontextPipeline example).
    Family(
        name="flux_kontext",
        label="FLUX.1 Kontext",
        steps=20,
        cfg_scale=1.0,
        guidance=2.5,
        sampler="euler",
        native_size="1024x1024",
        max_ref_images=MAX_EDIT_IMAGES,
        needs=(FLUX_TEXT, FLUX_VAE),
        recommends=FLUX_RECOMMENDS,
    ),
    # black-forest-labs/FLUX.1-Fill-dev model card: guidance 30, 50 steps (we keep 20).
    Family(
        name="flux_fill",
        label="FLUX.1 Fill (inpainting)",
        steps=20,
        cfg_scale=1.0,
        guidance=30.0,
        sampler="euler",
        native_size="1024x1024",
        mask_edits=True,
        needs=(FLUX_TEXT, FLUX_VAE),
        recommends=FLUX_RECOMMENDS,
    ),
    # black-forest-labs/FLUX.1-Depth-dev model card: guidance 10.
    Family(
        name="flux_controls",
        label="FLUX.1 Canny/Depth (structural control)",
        steps=20,
        cfg_scale=1.0,
        guidance=10.0,
        sampler="euler",
        native_size="1024x1024",
        needs=(FLUX_TEXT, FLUX_VAE),
        recommends=FLUX_RECOMMENDS,
    ),
    # ostris/Flex.2-preview model card: guidance 3.5; sd.cpp treats it as an inpainting model.
    Family(
        name="flex2",
        label="Flex.2",
        steps=20,
        cfg_scale=1.0,
        guidance=3.5,
        sampler="euler",
        native_size="1024x1024",
        mask_edits=True,
        needs=(FLUX_TEXT, FLUX_VAE),
        recommends=FLUX_RECOMMENDS,
    ),
    # docs/chroma.md: --cfg-scale 4.0 --sampling-method euler, t5xxl + ae.
    Family(
        name="chroma",
        label="Chroma",
        steps=20,
        cfg_scale=4.0,
        sampler="euler",
        native_size="1024x1024",
        needs=(T5_TEXT, FLUX_VAE),
    ),
    # docs/chroma_radiance.md: --cfg-scale 4.0 --sampling-method euler, t5xxl only (pixel space).
    Family(
        name="chroma_radiance",
        label="Chroma1-Radiance",
        steps=20,
        cfg_scale=4.0,
        sampler="euler",
        native_size="1024x1024",
        latents="none",
        needs=(T5_TEXT,),
    ),
    # docs/flux2.md: dev --cfg-scale 1.0 --sampling-method euler, -r references, Mistral LLM.
    Family(
        name="flux2",
        label="FLUX.2 dev",
        steps=20,
        cfg_scale=1.0,
        guidance=3.5,
        sampler="euler",
        native_size="1024x1024",
        max_ref_images=MAX_EDIT_IMAGES,
        latents="kl32",
        needs=(
            _need_llm(
                "add a Mistral-Small-3.2-24B-Instruct-2506 GGUF "
                "(unsloth/Mistral-Small-3.2-24B-Instruct-2506-GGUF)"
            ),
            FLUX2_VAE,
        ),
    ),
    # docs/flux2.md: klein --cfg-scale 1.0 --steps 4; klein base --cfg-scale 4.0 --steps 20.
    Family(
        name="flux2_klein",
        label="FLUX.2 klein",
        steps=4,
        cfg_scale=1.0,
        sampler="euler",
        native_size="1024x1024",
        max_ref_images=MAX_EDIT_IMAGES,
        latents="kl32",
        needs=(
            _need_llm(
                "add qwen_3_4b.safetensors (Comfy-Org/flux2-klein-4B, split_files/text_encoders; "
                "qwen_3_8b for the 9B)"
            ),
            FLUX2_VAE,
        ),
    ),
    # docs/qwen_image.md: --cfg-scale 2.5 --sampling-method euler --flow-shift 3 -W/-H 1024.
    Family(
        name="qwen_image",
        label="Qwen-Image",
        steps=20,
        cfg_scale=2.5,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=3.0,
        latents="video",
        needs=(
            _need_llm(
                "add qwen_2.5_vl_7b.safetensors (Comfy-Org/Qwen-Image_ComfyUI, split_files/text_encoders)"
            ),
            QWEN_VAE,
        ),
    ),
    # docs/qwen_image_edit.md: as Qwen-Image, with -r references; 2509 with a GGUF LLM also
    # takes the vision tower (--llm_vision *.mmproj*.gguf).
    Family(
        name="qwen_image_edit",
        label="Qwen-Image-Edit",
        steps=20,
        cfg_scale=2.5,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=3.0,
        max_ref_images=MAX_EDIT_IMAGES,
        latents="video",
        needs=(
            _need_llm(
                "add qwen_2.5_vl_7b.safetensors (Comfy-Org/Qwen-Image_ComfyUI, split_files/text_encoders)"
            ),
            QWEN_VAE,
        ),
    ),
    # docs/z_image.md: base --cfg-scale 5.0; turbo --cfg-scale 1.0 --steps 8 (variants());
    # flow_shift 3 is sd.cpp's default for Z-Image.
    Family(
        name="z_image",
        label="Z-Image",
        steps=20,
        cfg_scale=5.0,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=3.0,
        needs=(
            _need_llm("add qwen_3_4b.safetensors (Comfy-Org/z_image_turbo, split_files/text_encoders)"),
            FLUX_VAE,
        ),
    ),
    # docs/ovis_image.md: --cfg-scale 5.0, ae + ovis_2.5 LLM.
    Family(
        name="ovis_image",
        label="Ovis-Image",
        steps=20,
        cfg_scale=5.0,
        sampler="euler",
        native_size="1024x1024",
        needs=(
            _need_llm("add ovis_2.5.safetensors (Comfy-Org/Ovis-Image, split_files/text_encoders)"),
            FLUX_VAE,
        ),
    ),
    # docs/anima.md: --cfg-scale 6.0 --sampling-method euler, qwen_image_vae + Qwen3-0.6B-Base.
    Family(
        name="anima",
        label="Anima",
        steps=20,
        cfg_scale=6.0,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=3.0,
        latents="video",
        needs=(
            _need_llm("add qwen_3_06b_base.safetensors (circlestone-labs/Anima, split_files/text_encoders)"),
            QWEN_VAE,
        ),
    ),
    # docs/ernie_image.md: base --cfg-scale 5.0; turbo --cfg-scale 1.0 --steps 8; flux2_ae;
    # flow_shift 4 is sd.cpp's default for ERNIE-Image.
    Family(
        name="ernie_image",
        label="ERNIE-Image",
        steps=20,
        cfg_scale=5.0,
        sampler="euler",
        native_size="1024x1024",
        flow_shift=4.0,
        latents="kl32",
        needs=(
            _need_llm("add ministral-3-3b.safetensors (Comfy-Org/ERNIE-Image, text_encoders)"),
            FLUX2_VAE,
        ),
    ),
    # docs/wan.md: video (vid_gen) only; the node serves images.
    Family(
        name="wan",
        label="Wan 2.x (video)",
        steps=20,
        cfg_scale=6.0,
        sampler="euler",
        native_size="832x480",
        flow_shift=5.0,
        loras=False,
        generates_images=False,
        latents="video",
    ),
)
FAMILIES: dict[str, Family] = {f.name: f for f in FAMILY_LIST}
FamilyName = Literal[
    "sd1",
    "sd1_inpaint",
    "sd1_pix2pix",
    "sd2",
    "sd2_inpaint",
    "sdxl",
    "sdxl_inpaint",
    "sdxl_pix2pix",
    "sd3",
    "flux",
    "flux_kontext",
    "flux_fill",
    "flux_controls",
    "flex2",
    "chroma",
    "chroma_radiance",
    "flux2",
    "flux2_klein",
    "qwen_image",
    "qwen_image_edit",
    "z_image",
    "ovis_image",
    "anima",
    "ernie_image",
    "wan",
]
SD1 = FAMILIES["sd1"]


def variant_of(family: Family, file_name: str, *, tensor_variant: str = "") -> Family:
    """``family`` with the defaults of the variant its tensors or its file name show."""
    name = file_name.lower()
    turbo = "turbo" in name
    if family.name == "flux":
        # schnell has no guidance_in (sd.cpp: guidance_embed = false); the name decides only
        # for files the tensors cannot tell (.ckpt).
        if tensor_variant == "schnell" or (not tensor_variant and "schnell" in name):
            return family.with_variant("schnell", steps=4)
        return family.with_variant("dev")
    if family.name == "flux2_klein":
        if "base" in name:
            return family.with_variant("base", steps=20, cfg_scale=4.0)
        return family.with_variant("distilled")
    if family.name in ("z_image", "ernie_image"):
        if turbo:
            return family.with_variant("turbo", steps=8, cfg_scale=1.0)
        return family.with_variant("base")
    if family.name == "sd3" and turbo:
        # stabilityai/stable-diffusion-3.5-large-turbo model card: 4 steps, guidance 0.
        return family.with_variant("turbo", steps=4, cfg_scale=1.0)
    if family.name == "sd2":
        if turbo:
            # stabilityai/sd-turbo model card: 1-4 steps, no classifier-free guidance, 512.
            return family.with_variant("turbo", steps=4, cfg_scale=1.0, native_size="512x512")
        if "base" in name or "512" in name:
            return family.with_variant("base", native_size="512x512")
    if family.name == "sdxl" and turbo:
        # stabilityai/sdxl-turbo model card: 1-4 steps, no guidance, 512x512.
        return family.with_variant("turbo", steps=4, cfg_scale=1.0, native_size="512x512")
    if family.name == "sd1" and turbo:
        return family.with_variant("turbo", steps=4, cfg_scale=1.0)
    if tensor_variant:
        return family.with_variant(tensor_variant)
    return family


# --------------------------------------------------------------------------- detection


def _diffusion_names(index: TensorIndex) -> set[str]:
    """Tensor names without the optional ``model.diffusion_model.`` / ``diffusion_model.``."""
    out = set()
    for name in index.names:
        for prefix in ("model.diffusion_model.", "diffusion_model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        out.add(name)
    return out


def _starts(names: set[str], *prefixes: str) -> bool:
    return any(name.startswith(prefixes) for name in names)


def _in_channels(index: TensorIndex, *suffixes: str, axis: int) -> int:
    for suffix in suffixes:
        for prefix in ("model.diffusion_model.", "diffusion_model.", ""):
            shape = index.shapes.get(prefix + suffix)
            if shape and -len(shape) <= axis < len(shape):
                return shape[axis]
    return 0


def detect_family(
    index: TensorIndex, *, text_width: int = 0, has_clip_g: bool = False
) -> tuple[str, str] | None:
    """(family name, variant the tensors show) of a diffusion model, as sd.cpp's
    ``get_sd_version()`` decides; ``text_width``/``has_clip_g`` describe separate text encoders
    (a UNet without its own). None: no family sd.cpp knows."""
    names = _diffusion_names(index)
    for marker, family in (
        ("nerf_final_layer_conv.", "chroma_radiance"),
        ("joint_blocks.", "sd3"),
        ("transformer_blocks.0.img_mod.1.weight", "qwen_image"),
        ("llm_adapter.blocks.0.cross_attn.q_proj.weight", "anima"),
        ("double_blocks.0.img_mlp.gate_proj.weight", "ovis_image"),
        ("cap_embedder.0.weight", "z_image"),
        ("layers.0.adaLN_sa_ln.weight", "ernie_image"),
        ("blocks.0.cross_attn.norm_k.weight", "wan"),
    ):
        if _starts(names, marker):
            return family, ""
    if _starts(names, "double_stream_modulation_img."):
        return ("flux2", "") if _starts(names, "single_blocks.47.linear1.weight") else ("flux2_klein", "")
    if _starts(names, "double_blocks.", "single_transformer_blocks."):
        if _starts(names, "distilled_guidance_layer."):
            return "chroma", ""
        img_in = _in_channels(index, "img_in.weight", "x_embedder.weight", axis=-1)
        by_channels = {384: "flux_fill", 128: "flux_controls", 196: "flex2"}
        if img_in in by_channels:
            return by_channels[img_in], ""
        guided = _starts(names, "guidance_in.", "time_text_embed.guidance_embedder.")
        return "flux", "dev" if guided else "schnell"
    if not _starts(names, "input_blocks.", "unet.down_blocks."):
        return None
    in_channels = _in_channels(index, "input_blocks.0.0.weight", "unet.conv_in.weight", axis=1)
    inpaint, pix2pix = in_channels == 9, in_channels == 8
    embedded_g = index.has("conditioner.embedders.1", "cond_stage_model.1", "te.1")
    if embedded_g or has_clip_g or _starts(names, "label_emb."):
        if inpaint:
            return "sdxl_inpaint", ""
        if pix2pix:
            return "sdxl_pix2pix", ""
        if not _starts(names, "middle_block.1."):
            return "sdxl", "ssd1b" if _starts(names, "output_blocks.3.1.transformer_blocks.1") else "vega"
        return "sdxl", ""
    width = text_width
    if width == 1024:
        if inpaint:
            return "sd2_inpaint", ""
        return "sd2", "" if _starts(names, "middle_block.1.") else "tiny"
    if inpaint:
        return "sd1_inpaint", ""
    if pix2pix:
        return "sd1_pix2pix", ""
    if not _starts(names, "middle_block.1."):
        return "sd1", "tiny" if _starts(names, "output_blocks.7.1") else "sdxs"
    return "sd1", ""


def family_by_name(file_name: str) -> str:
    """The family of a file sd.cpp would detect but we cannot read (.ckpt): SD by name."""
    name = file_name.lower()
    if "xl" in name:
        return "sdxl"
    if any(marker in name for marker in ("v2", "2-1", "2.1", "2_1", "768", "sd2", "sd_turbo", "sd-turbo")):
        return "sd2"
    return "sd1"


def resolve_family(name: str, file_name: str, tensor_variant: str = "") -> Family:
    """The Family (with its variant's defaults) for a detected or configured family name; the
    file name tells Kontext from dev and Edit from Qwen-Image (identical tensors)."""
    lowered = file_name.lower()
    if name == "flux" and "kontext" in lowered:
        name = "flux_kontext"
    if name == "qwen_image" and "edit" in lowered:
        name = "qwen_image_edit"
    return variant_of(FAMILIES[name], file_name, tensor_variant=tensor_variant)
