"""What a weights file holds, read from its header alone, and which part of a model it is.

- ``.safetensors``: an 8-byte little-endian header length, then a JSON object of tensor name ->
  ``{"dtype", "shape", "data_offsets"}``. The header is bounded (``MAX_HEADER_BYTES``) and the
  data it describes must fit in the file, so a truncated download is reported, not loaded.
- ``.gguf``: magic, version, counts, key/values (skipped, except ``general.architecture`` and
  ``general.name``), tensor infos; bounded the same way. Not the ``gguf`` package's
  ``GGUFReader``: it materialises every value, and an LLM's tokenizer arrays (150k strings)
  take it 20 s per file on a node's CPU.
- ``.ckpt``: a pickle; never unpickled here (it can run code). Its role comes from its name.

Shapes are in PyTorch order (outermost first) for both formats: GGUF stores ggml's ``ne``
(innermost first) and is reversed, so ``shape[-1]`` is sd.cpp's ``ne[0]`` everywhere.

Results are cached by (path, size, mtime): the node rescans its folders every few seconds.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSORS = 1_000_000
CACHE_ENTRIES = 512

WeightsFormat = Literal["safetensors", "gguf", "ckpt"]
# What a file is to sd.cpp: a whole model in one file ("checkpoint": diffusion model plus text
# encoder and/or VAE), the diffusion model alone, one component, a LoRA, or none of these.
Role = Literal[
    "checkpoint",
    "diffusion",
    "clip_l",
    "clip_g",
    "t5xxl",
    "llm",
    "llm_vision",
    "vae",
    "taesd",
    "lora",
    "unknown",
]
FORMAT_BY_SUFFIX: dict[str, WeightsFormat] = {".safetensors": "safetensors", ".gguf": "gguf", ".ckpt": "ckpt"}
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


class UnreadableWeights(ValueError):
    """The file is not a weights file we can read (truncated, garbage, absurd header)."""


@dataclass(frozen=True)
class TensorIndex:
    path: Path
    format: WeightsFormat
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    # GGUF: general.architecture / general.name; safetensors: its "__metadata__" strings.
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> Iterable[str]:
        return self.shapes.keys()

    def has(self, *markers: str) -> bool:
        """Whether any tensor name contains any of ``markers``."""
        return any(marker in name for name in self.shapes for marker in markers)

    def find(self, suffix: str) -> tuple[int, ...] | None:
        """The shape of the first tensor whose name ends with ``suffix``."""
        for name, shape in self.shapes.items():
            if name.endswith(suffix):
                return shape
        return None


# --------------------------------------------------------------------------- reading


def _read_safetensors(path: Path, size: int) -> TensorIndex:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UnreadableWeights("shorter than a safetensors header (truncated?)")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > MAX_HEADER_BYTES:
            raise UnreadableWeights(
                f"safetensors header length {length} is out of bounds (not a safetensors file?)"
            )
        if 8 + length > size:
            raise UnreadableWeights(f"truncated: its header needs {8 + length} bytes, the file has {size}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableWeights(f"safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UnreadableWeights("safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    metadata = {str(k): v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    data_end = 0
    for name, info in header.items():
        if not isinstance(info, dict):
            raise UnreadableWeights(f"safetensors entry {name[:80]!r} is not an object")
        shape, dtype, offsets = info.get("shape"), info.get("dtype"), info.get("data_offsets")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(dtype, str)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise UnreadableWeights(f"safetensors entry {name[:80]!r} is malformed")
        shapes[name] = tuple(shape)
        dtypes[name] = dtype
        data_end = max(data_end, offsets[1])
    if 8 + length + data_end > size:
        raise UnreadableWeights(
            f"truncated: its tensors need {8 + length + data_end:,} bytes, the file has {size:,} "
            "(an interrupted download?)"
        )
    return TensorIndex(path, "safetensors", shapes, dtypes, metadata)


GGUF_METADATA_KEYS = frozenset({"general.architecture", "general.name"})
MAX_GGUF_KV = 1_000_000
MAX_GGUF_STRING = 64 * 1024 * 1024
MAX_GGUF_DIMS = 8
# GGUF value types: fixed sizes (uint8..float64, bool); 8 = string, 9 = array.
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# ggml tensor types: name, bytes per block, values per block (ggml.c type_traits).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 4, 1),
    1: ("F16", 2, 1),
    2: ("Q4_0", 18, 32),
    3: ("Q4_1", 20, 32),
    6: ("Q5_0", 22, 32),
    7: ("Q5_1", 24, 32),
    8: ("Q8_0", 34, 32),
    9: ("Q8_1", 36, 32),
    10: ("Q2_K", 84, 256),
    11: ("Q3_K", 110, 256),
    12: ("Q4_K", 144, 256),
    13: ("Q5_K", 176, 256),
    14: ("Q6_K", 210, 256),
    15: ("Q8_K", 292, 256),
    24: ("I8", 1, 1),
    25: ("I16", 2, 1),
    26: ("I32", 4, 1),
    27: ("I64", 8, 1),
    28: ("F64", 8, 1),
    30: ("BF16", 2, 1),
}


class _GGUFHeader:
    """A bounded reader of a GGUF file's header: values are skipped, never materialised (an
    LLM's 150k-token vocabulary costs a seek per token, not an object)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise UnreadableWeights(f"truncated: the GGUF header ends at byte {self.f.tell()} of {self.size}")
        return data

    def skip(self, n: int) -> None:
        target = self.f.tell() + n
        if target > self.size:
            raise UnreadableWeights(
                f"truncated: the GGUF header runs past the end of the file ({self.size} bytes)"
            )
        self.f.seek(target)

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string_length(self) -> int:
        n = self.u64()
        if n > MAX_GGUF_STRING:
            raise UnreadableWeights(f"GGUF string of {n} bytes is out of bounds")
        return n

    def string(self) -> str:
        return self.take(self.string_length()).decode("utf-8", errors="replace")

    def skip_value(self, kind: int, depth: int = 0) -> None:
        if kind in _GGUF_FIXED:
            self.skip(_GGUF_FIXED[kind])
        elif kind == _GGUF_STRING:
            self.skip(self.string_length())
        elif kind == _GGUF_ARRAY and depth < 4:
            item, count = self.u32(), self.u64()
            if item in _GGUF_FIXED:
                self.skip(_GGUF_FIXED[item] * count)
            else:
                if self.f.tell() + 8 * count > self.size:  # every item takes 8 bytes or more
                    raise UnreadableWeights(
                        f"truncated: a GGUF array of {count} items runs past the end of the file "
                        f"({self.size} bytes)"
                    )
                for _ in range(count):
                    self.skip_value(item, depth + 1)
        else:
            raise UnreadableWeights(f"GGUF value type {kind} is unknown")


def _read_gguf(path: Path, size: int) -> TensorIndex:
    with path.open("rb") as f:
        header = _GGUFHeader(f, size)
        if header.take(4) != b"GGUF":
            raise UnreadableWeights("not a GGUF file (bad magic)")
        version = header.u32()
        if version not in (2, 3):
            raise UnreadableWeights(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = header.u64(), header.u64()
        if n_tensors > MAX_TENSORS or n_kv > MAX_GGUF_KV:
            raise UnreadableWeights(f"GGUF counts ({n_tensors} tensors, {n_kv} keys) are out of bounds")
        metadata: dict[str, str] = {}
        alignment = 32
        for _ in range(n_kv):
            key = header.string()
            kind = header.u32()
            if kind == _GGUF_STRING and key in GGUF_METADATA_KEYS:
                metadata[key] = header.string()
            elif kind == 4 and key == "general.alignment":
                alignment = header.u32() or 32
            else:
                header.skip_value(kind)
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        data_end = 0
        for _ in range(n_tensors):
            name = header.string()
            n_dims = header.u32()
            if n_dims > MAX_GGUF_DIMS:
                raise UnreadableWeights(f"GGUF tensor {name[:80]!r} has {n_dims} dimensions")
            ne = [header.u64() for _ in range(n_dims)]
            kind, offset = header.u32(), header.u64()
            type_name, block_bytes, block_values = GGML_TYPES.get(kind, (f"type{kind}", 0, 1))
            shapes[name] = tuple(reversed(ne))
            dtypes[name] = type_name
            count = math.prod(ne)
            data_end = max(data_end, offset + count * block_bytes // block_values)
        data_start = -(-f.tell() // alignment) * alignment
    if data_start + data_end > size:
        raise UnreadableWeights(
            f"truncated: its tensors need {data_start + data_end:,} bytes, the file has {size:,} "
            "(an interrupted download?)"
        )
    return TensorIndex(path, "gguf", shapes, dtypes, metadata)


_cache: OrderedDict[tuple[str, int, int], TensorIndex | UnreadableWeights] = OrderedDict()
_cache_lock = threading.Lock()


def read_tensor_index(path: Path) -> TensorIndex:
    """The tensors of ``path`` from its header; ``UnreadableWeights`` says why not."""
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise UnreadableWeights(
            f"{path.suffix or 'no suffix'}: not a weights format (.safetensors, .gguf, .ckpt)"
        )
    try:
        stat = path.stat()
    except OSError as exc:
        raise UnreadableWeights(f"cannot read: {exc.strerror or exc}") from None
    if fmt == "ckpt":
        return TensorIndex(path, "ckpt")
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is None:
        try:
            cached = (
                _read_safetensors(path, stat.st_size)
                if fmt == "safetensors"
                else _read_gguf(path, stat.st_size)
            )
        except UnreadableWeights as exc:
            cached = exc
        except OSError as exc:
            cached = UnreadableWeights(f"cannot read: {exc.strerror or exc}")
        with _cache_lock:
            _cache[key] = cached
            while len(_cache) > CACHE_ENTRIES:
                _cache.popitem(last=False)
    if isinstance(cached, UnreadableWeights):
        raise cached
    return cached


# --------------------------------------------------------------------------- roles

LORA_MARKERS = (
    ".lora_up.",
    ".lora_down.",
    ".lora_A.",
    ".lora_B.",
    ".lora.up.",
    ".lora.down.",
    "_lora.up.",
    "_lora.down.",
    ".lora_mid.",
    ".hada_w1_a",
    ".lokr_w1",
)
LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lycoris_")
# The diffusion model of each family sd.cpp knows (model.cpp get_sd_version(), flux.hpp);
# prefix-free, so they match with or without ``model.diffusion_model.``.
UNET_MARKERS = ("input_blocks.0.0.weight", "unet.down_blocks.", "unet.conv_in.")
DIT_MARKERS = (
    "double_blocks.",  # FLUX.1, Chroma, Ovis (and FLUX.2)
    "single_blocks.",
    "joint_blocks.",  # SD3
    "img_mod.1.weight",  # Qwen-Image transformer_blocks.N.img_mod
    "double_stream_modulation_img.",  # FLUX.2
    "cap_embedder.",  # Z-Image
    "nerf_final_layer_conv.",  # Chroma Radiance
    "distilled_guidance_layer.",  # Chroma
    "cross_attn.norm_k.weight",  # Wan blocks.N.cross_attn
    "llm_adapter.blocks.",  # Anima
    "adaLN_sa_ln.weight",  # ERNIE-Image layers.N
    "single_transformer_blocks.",  # FLUX.1 in diffusers naming
)
# Components a single-file checkpoint can hold, by the prefixes sd.cpp reads them under.
EMBEDDED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("cond_stage_model.1.", "clip_g"),
    ("cond_stage_model.", "clip_l"),  # SD1 CLIP-L / SD2 OpenCLIP-H: the UNet's first encoder
    ("conditioner.embedders.0.", "clip_l"),
    ("conditioner.embedders.1.", "clip_g"),
    ("text_encoders.clip_l.", "clip_l"),
    ("text_encoders.clip_g.", "clip_g"),
    ("text_encoders.t5xxl.", "t5xxl"),
    ("text_encoders.llm.", "llm"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
)
# The CLIP token embeddings sd.cpp reads the text width from (model.cpp get_sd_version()).
SD_TOKEN_EMBEDDINGS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.model.token_embedding.weight",
    "text_model.embeddings.token_embedding.weight",
    "te.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.0.model.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
)
_TAEHV = re.compile(r"(^|\.)(en|de)coder\.\d+\.")


@dataclass(frozen=True)
class FileRole:
    """What one weights file is, with what the rest of the folder logic needs to know."""

    path: Path
    role: Role
    detail: str = ""
    # Components a checkpoint holds besides its diffusion model (clip_l, clip_g, t5xxl, vae, llm).
    contains: frozenset[str] = frozenset()
    # Latent kind of a VAE/TAESD ("kl4", "kl16", "kl32", "video"); "" when unknown.
    latents: str = ""
    # CLIP text width (768 CLIP-L, 1024 OpenCLIP-H, 1280 CLIP-G) of a text encoder or checkpoint.
    text_width: int = 0
    index: TensorIndex | None = None


def _strip(name: str) -> str:
    for prefix in ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.", "tae."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _text_width(index: TensorIndex) -> int:
    for name in SD_TOKEN_EMBEDDINGS:
        shape = index.shapes.get(name)
        if shape:
            return shape[-1]
    shape = index.find("token_embedding.weight")
    return shape[-1] if shape else 0


def _vae_latents(index: TensorIndex) -> str:
    for name, shape in index.shapes.items():
        short = _strip(name)
        if short == "decoder.conv_in.weight" and len(shape) == 4:
            return f"kl{shape[1]}"
        if short == "decoder.conv1.weight" and len(shape) == 5:
            return "video"
    return ""


def _taesd_latents(index: TensorIndex) -> str:
    for name, shape in index.shapes.items():
        short = _strip(name)
        if short == "decoder.layers.0.weight" and len(shape) == 4:
            return f"kl{shape[1]}"
    if any(_TAEHV.search(_strip(n)) for n in index.names):
        return "video"
    return ""


def _is_lora(index: TensorIndex) -> bool:
    return any(m in n for n in index.names for m in LORA_MARKERS) or any(
        n.startswith(LORA_PREFIXES) for n in index.names
    )


def _embedded(index: TensorIndex) -> frozenset[str]:
    found = set()
    for name in index.names:
        for prefix, component in EMBEDDED_PREFIXES:
            if name.startswith(prefix):
                found.add(component)
                break
    return frozenset(found)


def _llm_kind(index: TensorIndex) -> str:
    arch = index.metadata.get("general.architecture", "")
    if arch:
        return arch
    if index.has("visual.blocks.", "visual.patch_embed."):
        return "qwen2.5-vl"
    if index.has("self_attn.q_norm."):
        return "qwen3"
    return "transformer LLM"


def classify_index(index: TensorIndex) -> FileRole:
    """The role of a readable file, from its tensor names (and, for GGUF, its architecture)."""
    path = index.path
    names = list(index.names)
    if not names:
        return FileRole(path, "unknown", "no tensors", index=index)
    if _is_lora(index):
        return FileRole(path, "lora", "LoRA", index=index)
    arch = index.metadata.get("general.architecture", "")
    if index.has(*UNET_MARKERS) or index.has(*DIT_MARKERS):
        contains = _embedded(index)
        # The UNet's and SD3's encoders and VAE can live in the same file; sd.cpp then takes
        # it as model_path. A diffusion model alone goes in diffusion_model_path.
        role: Role = "checkpoint" if contains else "diffusion"
        return FileRole(path, role, contains=contains, text_width=_text_width(index), index=index)
    if (arch == "clip" and index.has("v.blk.", "mm.")) or all(
        n.startswith(("v.", "mm.", "visual.")) for n in names
    ):
        return FileRole(path, "llm_vision", f"LLM vision tower ({arch or 'visual'})", index=index)
    if arch in ("t5", "t5encoder") or index.has("encoder.block.0.layer.0.SelfAttention", "enc.blk.0."):
        return FileRole(path, "t5xxl", "T5 text encoder", index=index)
    if index.has("text_model.encoder.layers.", "transformer.resblocks.", "text_model.embeddings."):
        width = _text_width(index)
        if width == 768:
            return FileRole(path, "clip_l", "CLIP-L text encoder", text_width=width, index=index)
        if width == 1280:
            return FileRole(path, "clip_g", "CLIP-G text encoder", text_width=width, index=index)
        return FileRole(
            path, "unknown", f"CLIP text encoder of width {width} (neither CLIP-L nor CLIP-G)", index=index
        )
    if (arch and index.has("blk.0.attn_q.", "token_embd.")) or index.has(
        "layers.0.self_attn.q_proj.", "layers.0.self_attn.qkv_proj."
    ):
        return FileRole(path, "llm", f"LLM text encoder ({_llm_kind(index)})", index=index)
    if index.has("vision_model.encoder.layers."):
        return FileRole(path, "unknown", "CLIP vision encoder (not used for images)", index=index)
    short = [_strip(n) for n in names]
    if any(n.startswith(("encoder.layers.", "decoder.layers.")) for n in short) or (
        any(_TAEHV.search(n) for n in short) and not any(n.startswith("decoder.up") for n in short)
    ):
        return FileRole(path, "taesd", "tiny autoencoder", latents=_taesd_latents(index), index=index)
    if any(
        n.startswith(("decoder.up.", "decoder.up_blocks.", "decoder.upsamples.", "decoder.conv_in."))
        for n in short
    ):
        return FileRole(path, "vae", "autoencoder", latents=_vae_latents(index), index=index)
    if index.has("control_model.", "input_hint_block."):
        return FileRole(path, "unknown", "ControlNet (not used)", index=index)
    return FileRole(path, "unknown", "no tensor names sd.cpp uses for a model part", index=index)


CKPT_NAME_ROLES: tuple[tuple[str, Role], ...] = (
    ("lora", "lora"),
    ("taesd", "taesd"),
    ("vae", "vae"),
    ("clip_l", "clip_l"),
    ("clip_g", "clip_g"),
    ("t5", "t5xxl"),
)


def classify_file(path: Path) -> FileRole:
    """The role of ``path``; an unreadable file is ``unknown`` with the reason as ``detail``."""
    try:
        index = read_tensor_index(path)
    except UnreadableWeights as exc:
        return FileRole(path, "unknown", f"unreadable: {exc}")
    if index.format == "ckpt":
        lowered = path.name.lower()
        for marker, role in CKPT_NAME_ROLES:
            if marker in lowered:
                return FileRole(path, role, "by file name (.ckpt is not inspected)", index=index)
        return FileRole(path, "checkpoint", "by file name (.ckpt is not inspected)", index=index)
    return classify_index(index)
