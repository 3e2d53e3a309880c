"""The synthetic test model on disk, and the shared image system that serves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import openai

from tests.support.servers import REPO, Proc

# The synthetic checkpoint is deterministic (seed 0); it is written once into this ignored
# folder and reused while complete. Delete the folder to force a rewrite.
MODEL_CACHE = REPO / ".cache" / "test-models"
DEMO_MODEL = "demo"


def copy_model(models_dir: Path, target: Path, name: str) -> Path:
    """A second model folder sharing the demo weights (hard links: no extra disk)."""
    folder = target / name
    folder.mkdir(parents=True)
    for item in (models_dir / DEMO_MODEL).iterdir():
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
