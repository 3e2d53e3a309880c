"""A small txt2img job for the stable-diffusion.cpp engine tests (64x64, one step, seed 5)."""

from __future__ import annotations

from llmlb_node.stable_diffusion.engine.engine import EngineJob


def job(**overrides: object) -> EngineJob:
    base: dict[str, object] = dict(
        prompt="a cat",
        negative_prompt="",
        width=64,
        height=64,
        steps=1,
        cfg_scale=1.0,
        sampler="euler",
        scheduler=None,
        seed=5,
        batch_count=1,
    )
    base.update(overrides)
    return EngineJob(**base)  # type: ignore[arg-type]
