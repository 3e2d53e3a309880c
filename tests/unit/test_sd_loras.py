"""The node's LoRA checks (no sd.cpp here): every ``<lora:...>`` tag of both prompts is parsed and
checked against the model's known LoRA files, and the prompt the binding gets holds only tags
the node built. tests/system/test_sd_loras.py runs the binding's own parser on the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlb_core.server.errors import OpenAIError
from llmlb_node.stable_diffusion.jobs.loras import LORA_TAG, plan_loras, prompt_with_loras, strip_tags
from llmlb_plugins.images.protocol import LoraRef

KNOWN = {"pixel-art": Path("/srv/loras/pixel-art.safetensors"), "ink": Path("/srv/m/loras/ink.gguf")}


def plan(prompt: str = "a cat", negative: str = "", loras: list[LoraRef] | None = None, **kw: object):
    args: dict[str, object] = dict(
        prompt=prompt,
        negative_prompt=negative,
        requested=loras,
        available=KNOWN,
        supported=True,
        model="demo",
        family_label="Stable Diffusion 1.x",
    )
    args.update(kw)
    return plan_loras(**args)  # type: ignore[arg-type]


def test_tags_and_extra_become_known_files_with_summed_weights() -> None:
    result = plan(
        "a <lora:pixel-art:0.5>cat<lora:ink:1>",
        "blurry <lora:pixel-art:0.25>",
        [LoraRef(name="ink", weight=-0.5)],
    )
    assert result.prompt == "a cat"
    assert result.negative_prompt == "blurry "
    assert result.loras == {KNOWN["pixel-art"]: 0.75, KNOWN["ink"]: 0.5}


@pytest.mark.parametrize(
    ("prompt", "param"),
    [
        ("<lora:/etc/passwd:1>", "prompt"),
        ("<lora:../../secret:1>", "prompt"),
        ("<lora:../pixel-art:1>", "prompt"),
        ("<lora:|high_noise|pixel-art:1>", "prompt"),
        # Removing the inner tag joins the text around it into a tag with a path.
        ("<lo<lora:pixel-art:1>ra:/tmp/evil:1>", "prompt"),
    ],
)
def test_a_path_or_unknown_name_is_lora_not_found_listing_the_available(prompt: str, param: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        plan(prompt)
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "lora_not_found", param)
    assert "Available LoRAs: ink, pixel-art" in error.message


def test_unknown_lora_in_the_negative_prompt_and_in_the_extra() -> None:
    with pytest.raises(OpenAIError) as refused:
        plan(negative="<lora:nope:1>")
    assert refused.value.param == "negative_prompt" and refused.value.code == "lora_not_found"
    with pytest.raises(OpenAIError) as refused:
        plan(loras=[LoraRef(name="nope")])
    assert refused.value.param == "loras"


@pytest.mark.parametrize("weight", ["x", "nan", "inf", "5", "-4.5", "1:2", "1e400"])
def test_a_bad_tag_weight_is_a_400(weight: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        plan(f"<lora:pixel-art:{weight}>")
    assert refused.value.status == 400 and refused.value.code == "invalid_lora_weight"


def test_weights_that_add_up_past_the_limit_are_a_400() -> None:
    with pytest.raises(OpenAIError) as refused:
        plan("<lora:ink:3><lora:ink:3>")
    assert refused.value.code == "invalid_lora_weight"


def test_a_family_without_loras_refuses_any() -> None:
    with pytest.raises(OpenAIError) as refused:
        plan("<lora:ink:1>", supported=False)
    assert refused.value.code == "loras_not_supported" and refused.value.status == 400
    assert plan("no tags", supported=False).loras == {}


def test_no_available_loras_says_none() -> None:
    with pytest.raises(OpenAIError) as refused:
        plan("<lora:ink:1>", available={})
    assert "Available LoRAs: none" in refused.value.message


def test_strip_tags_removes_tags_until_none_is_left() -> None:
    text, found = strip_tags("x <lo<lora:a:1>ra:b:0.5> y <lora:c: 2 >", "prompt")
    assert text == "x  y " and LORA_TAG.search(text) is None
    assert found == [("a", 1.0), ("b", 0.5), ("c", 2.0)]


def test_built_prompt_puts_absolute_tags_first() -> None:
    built = prompt_with_loras("a cat <lora:x", {KNOWN["ink"]: 0.5})
    assert built == "<lora:/srv/m/loras/ink.gguf:0.5>a cat <lora:x"
    with pytest.raises(ValueError):
        prompt_with_loras("a", {Path("/srv/odd:name/x.safetensors"): 1.0})
