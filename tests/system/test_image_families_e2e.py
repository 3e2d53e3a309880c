"""Two families behind one router, end to end: a router process and a node process serving the
synthetic SD1 checkpoint and the synthetic multi-file FLUX.1 (files named as a user downloads
them), with a LoRA folder. The official SDK talks to the router only.

- ``/v1/models`` says what each model can do (family, native size, masks, references, LoRAs).
- The SDK's streaming call yields partial images, then the completed image, for both families.
- A Kontext edit with two reference images differs from one with one; an SD1 model refuses a
  second image with a 400 naming the models that take references.
- A LoRA named in the request changes the FLUX image; an unknown one is a 400 listing the known.

Model folders are hard links to the cached synthetic files. ``flux-schnell`` is the folder as
written (no model.toml); the generating FLUX folders add a model.toml with only
``native_size = "64x64"`` (``size=auto``), because the smallest listed OpenAI size, 256x256,
takes half a minute per image on this CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.images_util import decode_b64, gradient, mean_abs_diff, png_bytes
from tests.support.models import DEMO_MODEL, FLUX_LORA, FLUX_MODEL, SD1_LORA, ImageSystem, copy_model
from tests.support.servers import Proc, create_key, node_proc, router_proc

FLUX = "flux-64"
KONTEXT = "kontext-64"
SMALL = 'native_size = "64x64"\n'
FAST = {"steps": 2, "seed": 11}


def _flux_folder(source: Path, target: Path, diffusion_name: str, toml: str | None) -> None:
    target.mkdir(parents=True)
    for item in source.iterdir():
        name = diffusion_name if item.name == "flux1-schnell.safetensors" else item.name
        (target / name).hardlink_to(item)
    if toml is not None:
        (target / "model.toml").write_text(toml)


@pytest.fixture(scope="module")
def families(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, flux_models_dir: Path, lora_dir: Path
) -> Iterator[ImageSystem]:
    tmp = tmp_path_factory.mktemp("families")
    served = tmp / "models"
    copy_model(models_dir, served, DEMO_MODEL)
    flux = flux_models_dir / FLUX_MODEL
    _flux_folder(flux, served / "flux-schnell", "flux1-schnell.safetensors", None)
    _flux_folder(flux, served / FLUX, "flux1-schnell.safetensors", SMALL)
    _flux_folder(flux, served / KONTEXT, "flux1-kontext-dev.safetensors", SMALL)
    started: list[Proc] = []
    try:
        router = router_proc(tmp, env={"LLMLB_PLUGIN__IMAGES__DEFAULT_RESPONSE_FORMAT": "b64_json"})
        started.append(router)
        router.start().wait_healthy()
        node = node_proc(
            tmp,
            router.url,
            served,
            create_key(router.url, ["node"]),
            name="families",
            extra=["--threads", "2"],
            env={"LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__LORA_DIR": str(lora_dir)},
        )
        started.append(node)
        node.start().wait_healthy(60).wait_online(router.url)
        yield ImageSystem(router, node, create_key(router.url, ["api"]))
    finally:
        for proc in reversed(started):
            proc.stop()


def _models(system: ImageSystem) -> dict[str, dict[str, Any]]:
    answer = httpx.get(
        f"{system.router.url}/v1/models", headers={"authorization": f"Bearer {system.api_key}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return {m["id"]: m for m in answer.json()["data"]}


def test_v1_models_says_what_each_family_can_do(families: ImageSystem) -> None:
    models = _models(families)
    assert {DEMO_MODEL, "flux-schnell", FLUX, KONTEXT} <= set(models)
    demo, flux = models[DEMO_MODEL]["details"], models["flux-schnell"]["details"]
    kontext = models[KONTEXT]["details"]
    assert demo["family"] == "sd1" and demo["supports"]["mask"] is True
    assert demo["supports"]["reference_images"] == 0
    # The folder exactly as downloaded: detected as FLUX.1 schnell, its native size 1024x1024.
    assert flux["family"] == "flux" and flux["native_size"] == "1024x1024"
    assert flux["supports"]["reference_images"] == 0 and flux["supports"]["partial_images"] is True
    assert kontext["family"] == "flux_kontext" and kontext["supports"]["reference_images"] == 16
    for details in (demo, flux, kontext):
        assert {SD1_LORA, FLUX_LORA} <= set(details["supports"]["loras"])


@pytest.mark.parametrize("model", [DEMO_MODEL, FLUX])
def test_the_sdk_streams_partial_images_then_the_completed_image(families: ImageSystem, model: str) -> None:
    stream = families.client().images.generate(
        model=model,
        prompt="a lighthouse",
        stream=True,
        partial_images=1,
        n=2,
        extra_body={"steps": 3, "seed": 5},
    )
    events = list(stream)
    kinds = [(e.type, getattr(e, "image_index", None)) for e in events]
    assert kinds == [
        ("image_generation.partial_image", 0),
        ("image_generation.completed", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.completed", 1),
    ], kinds
    completed = [decode_b64(e.b64_json) for e in events if e.type == "image_generation.completed"]
    assert all(image.size == (64, 64) for image in completed)
    assert mean_abs_diff(completed[0], completed[1]) > 0.5  # seeds 5 and 6


def test_kontext_uses_every_image_and_sd1_refuses_a_second_one(families: ImageSystem) -> None:
    client = families.client()
    first = png_bytes(gradient(64, 64))
    second = png_bytes(gradient(64, 64).rotate(90))

    def edit(model: str, images: list[bytes]) -> Any:
        files = [(f"{i}.png", data, "image/png") for i, data in enumerate(images)]
        return client.images.edit(model=model, image=files, prompt="blend them", extra_body=FAST)

    one = decode_b64(edit(KONTEXT, [first]).data[0].b64_json)
    two = decode_b64(edit(KONTEXT, [first, second]).data[0].b64_json)
    assert mean_abs_diff(one, two) > 0.5, "the second reference image changed nothing"
    with pytest.raises(openai.BadRequestError) as refused:
        edit(DEMO_MODEL, [first, second])
    assert refused.value.param == "image", refused.value.body
    assert KONTEXT in refused.value.message, refused.value.body


def test_a_lora_changes_the_flux_image_and_an_unknown_one_is_refused(families: ImageSystem) -> None:
    client = families.client()

    def image(**extra: Any) -> Any:
        result = client.images.generate(model=FLUX, prompt="a red house", extra_body={**FAST, **extra})
        return decode_b64(result.data[0].b64_json)

    plain = image()
    with_lora = image(loras=[{"name": FLUX_LORA, "weight": 1.0}])
    assert mean_abs_diff(plain, with_lora) > 0.5
    with pytest.raises(openai.BadRequestError) as refused:
        image(loras=[{"name": "no-such-lora", "weight": 1.0}])
    assert refused.value.code == "lora_not_found", refused.value.body
    assert FLUX_LORA in refused.value.message, refused.value.body
