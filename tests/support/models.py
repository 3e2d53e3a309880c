"""The synthetic test model on disk, and the shared image system that serves it."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai

from tests.support.servers import REPO, Proc

# The synthetic checkpoints are deterministic (seed 0); each is written once into an ignored
# folder and reused while complete. Delete the folder to force a rewrite.
MODEL_CACHE = REPO / ".cache" / "test-models"
DEMO_MODEL = "demo"
# The multi-file FLUX.1 folder (demo_flux: flux1-schnell, clip_l, ae, taef1; no model.toml),
# in a models dir of its own so that the nodes serving MODEL_CACHE do not see it.
FLUX_CACHE = REPO / ".cache" / "test-flux-models"
FLUX_MODEL = "flux-schnell-tiny"
# LoRA files (demo_lora), one folder: a node's lora_dir. A prompt names them <lora:NAME:W>.
LORA_CACHE = REPO / ".cache" / "test-loras"
SD1_LORA = "sd1-demo-lora"
FLUX_LORA = "flux-tiny-lora"


@contextmanager
def cache_lock() -> Iterator[None]:
    """Held while a synthetic file in ``.cache/`` is checked and written: pytest-xdist's workers
    (``make test``) share the folder, so the first worker that needs a file writes it while the
    others wait, then find it complete."""
    folder = REPO / ".cache"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "write.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def copy_model(models_dir: Path, target: Path, name: str, source: str = DEMO_MODEL) -> Path:
    """A second model folder sharing the weights of ``models_dir/source`` (hard links: no
    extra disk)."""
    folder = target / name
    folder.mkdir(parents=True)
    for item in (models_dir / source).iterdir():
        try:
            (folder / item.name).hardlink_to(item)
        except OSError:
            shutil.copy2(item, folder / item.name)
    return folder


class ImageSystem:
    """A router process and a StableDiffusion node process shared by a test session."""

    def __init__(self, router: Proc, node: Proc, api_key: str) -> None:
        self.router = router
        self.node = node
        self.api_key = api_key

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=self.api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]
