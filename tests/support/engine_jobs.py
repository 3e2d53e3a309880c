"""A small txt2img job for the stable-diffusion.cpp engine tests (64x64, one step, seed 5)."""

from __future__ import annotations

from typing import Any

from llmlb_node.stable_diffusion.jobs.job import GenerateArgs, SDJob

# The SDJob fields; every other override is one of the binding's arguments (GenerateArgs).
JOB_FIELDS = ("images", "partial_images", "listener")


def job(**overrides: Any) -> SDJob:
    args: dict[str, Any] = dict(
        prompt="a cat",
        negative_prompt="",
        width=64,
        height=64,
        sample_steps=1,
        cfg_scale=1.0,
        sample_method="euler",
        seed=5,
    )
    settings = {k: overrides.pop(k) for k in JOB_FIELDS if k in overrides}
    args.update(overrides)
    return SDJob(GenerateArgs(**args), **settings)
