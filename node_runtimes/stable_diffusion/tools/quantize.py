"""Write a quantised GGUF copy of a model's weights next to them (``llmlb quantize``).

With both files in the folder, the node chooses by environment (see ``model_folder``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("llmlb.node.sd")

GGUF_TYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f16")


def quantize(weights: Path, output_type: str = "q8_0", output: Path | None = None) -> Path:
    """Convert ``weights`` (.safetensors/.ckpt) to GGUF; written atomically, returns the path."""
    import stable_diffusion_cpp as sdc

    if output_type not in GGUF_TYPES:
        raise ValueError(f"output_type must be one of {GGUF_TYPES}")
    output = output or weights.with_name(f"{weights.stem}-{output_type}.gguf")
    partial = output.with_name(f".{output.name}.partial")
    log.info("converting %s to %s (%s)", weights.name, output.name, output_type)
    ok = sdc.convert(
        str(weights).encode(), b"", str(partial).encode(), sdc.GGML_TYPE_MAP[output_type], b"", True
    )
    if not ok or not partial.exists():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"stable-diffusion.cpp could not convert {weights}")
    os.replace(partial, output)
    return output
