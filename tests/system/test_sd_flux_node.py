"""A node serving the synthetic multi-file FLUX.1 folder (no model.toml, files named as users
download them) and the same files as a FLUX.1 Kontext folder: streamed partial images through
the SDK, reference-image edits, distilled guidance and a FLUX LoRA, all on real
stable-diffusion.cpp at 64x64 with 2-3 steps.

The node app runs in-process, served over loopback HTTP by uvicorn in a thread (see
test_sd_node_streaming). Folders (hard links to the same files): ``flux-schnell-tiny`` exactly as
written (no model.toml: its advert is checked); ``flux-64`` and the Kontext folder (the FLUX
files under a Kontext diffusion-model name: the tensors of Kontext dev and dev are the same, the
name picks it) with a model.toml that only sets ``native_size = "64x64"``, so that ``size=auto``
images take seconds on this CPU (256x256, the smallest listed size, takes half a minute each).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.images_util import alpha_mask, decode_b64, gradient, mean_abs_diff, png_bytes
from tests.support.models import FLUX_LORA, FLUX_MODEL
from tests.system.test_sd_node_streaming import Node, serve

FLUX = "flux-64"
KONTEXT = "flux-kontext-64"
FAST = {"steps": 2, "seed": 7}
SMALL = 'native_size = "64x64"\n'


@pytest.fixture(scope="module")
def flux_node(
    flux_models_dir: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("flux-models")
    source = flux_models_dir / FLUX_MODEL
    for name, diffusion, toml in (
        (FLUX_MODEL, "flux1-schnell.safetensors", None),
        (FLUX, "flux1-schnell.safetensors", SMALL),
        (KONTEXT, "flux1-kontext-dev.safetensors", SMALL),
    ):
        folder = root / name
        folder.mkdir()
        for item in source.iterdir():
            target = diffusion if item.name == "flux1-schnell.safetensors" else item.name
            (folder / target).hardlink_to(item)
        if toml is not None:
            (folder / "model.toml").write_text(toml)
    with serve(root, lora_dir=str(lora_dir)) as node:
        yield node


def image_of(result: Any) -> Any:
    return decode_b64(result.data[0].b64_json)


def test_adverts_name_the_family_and_what_it_supports(flux_node: Node) -> None:
    details = {a.id: a.details for a in flux_node.runtime.models()}
    flux, kontext = details[FLUX_MODEL], details[KONTEXT]
    assert flux["family"] == "flux" and kontext["family"] == "flux_kontext"
    assert flux["native_size"] == "1024x1024" and flux["defaults"]["guidance"] == 3.5
    assert flux["supports"]["reference_images"] == 0 and kontext["supports"]["reference_images"] == 16
    assert flux["supports"]["mask"] is False and FLUX_LORA in flux["supports"]["loras"]
    assert flux["supports"]["partial_images"] is True


def test_sdk_streams_flux_partial_images_then_the_completed_image(flux_node: Node) -> None:
    events = list(
        flux_node.client().images.generate(
            model=FLUX,
            prompt="a red cube",
            stream=True,
            partial_images=2,
            extra_body={"steps": 3, "seed": 7},
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert all(decode_b64(e.b64_json).size == (64, 64) for e in events)


def test_kontext_edits_use_every_image_as_a_reference(flux_node: Node) -> None:
    first = ("a.png", png_bytes(gradient(64, 64)), "image/png")
    second = ("b.png", png_bytes(gradient(64, 64).rotate(90)), "image/png")
    client = flux_node.client()

    def edit(*images: Any) -> Any:
        return image_of(
            client.images.edit(model=KONTEXT, image=list(images), prompt="blend", extra_body=FAST)
        )

    one, two, again = edit(first), edit(first, second), edit(first)
    assert mean_abs_diff(one, again) == 0  # same seed, same references: same pixels
    assert mean_abs_diff(one, two) > 0.5  # the second reference changes the image
    assert one.size == (64, 64)


def test_reference_limits_and_masks_are_checked(flux_node: Node) -> None:
    image = ("a.png", png_bytes(gradient(64, 64)), "image/png")
    client = flux_node.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(model=FLUX, image=[image, image], prompt="x", extra_body=FAST)
    assert refused.value.code == "too_many_images" and "FLUX.1" in refused.value.message
    mask = ("m.png", png_bytes(alpha_mask(64, 64, (0, 0, 32, 32))), "image/png")
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(model=KONTEXT, image=image, mask=mask, prompt="x", extra_body=FAST)
    assert refused.value.code == "mask_not_supported" and refused.value.param == "mask"


def test_guidance_reaches_the_model(flux_node: Node) -> None:
    client = flux_node.client()

    def generate(guidance: float) -> Any:
        return image_of(
            client.images.generate(model=FLUX, prompt="a cube", extra_body={**FAST, "guidance": guidance})
        )

    assert mean_abs_diff(generate(1.0), generate(8.0)) > 0.5


def test_a_flux_lora_changes_the_pixels_and_an_unknown_one_is_refused(flux_node: Node) -> None:
    client = flux_node.client()

    def generate(prompt: str) -> Any:
        return image_of(client.images.generate(model=FLUX, prompt=prompt, extra_body=FAST))

    plain, with_lora = generate("a cube"), generate(f"a cube <lora:{FLUX_LORA}:1>")
    assert mean_abs_diff(plain, with_lora) > 0.5
    with pytest.raises(openai.BadRequestError) as refused:
        generate("a cube <lora:missing:1>")
    assert refused.value.code == "lora_not_found" and FLUX_LORA in refused.value.message
