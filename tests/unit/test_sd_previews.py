"""Which sampling steps become partial images, which preview method a model gets, and the
node's server-sent events (no sd.cpp here)."""

from __future__ import annotations

import msgspec
import pytest
from PIL import Image

from llmlb_core.server.errors import OpenAIError
from llmlb_node.stable_diffusion.answers.events import StreamFormat, error_event
from llmlb_node.stable_diffusion.answers.previews import frame_to_image, preview_steps, resolve_method
from llmlb_plugins.images.protocol import ImageStreamEvent


@pytest.mark.parametrize(
    ("steps", "k", "expected"),
    [
        (20, 3, [5, 10, 15]),
        (4, 2, [1, 3]),
        (4, 3, [1, 2, 3]),
        (3, 2, [1, 2]),
        (2, 3, [1]),  # too few steps: fewer partial images, never the last step
        (1, 3, []),
        (10, 0, []),
        (8, 1, [4]),
    ],
)
def test_preview_steps_are_spread_and_never_the_last(steps: int, k: int, expected: list[int]) -> None:
    chosen = preview_steps(steps, k)
    assert chosen == expected
    assert len(chosen) <= k and all(1 <= s < steps for s in chosen) and chosen == sorted(set(chosen))


def test_preview_method_auto_follows_the_taesd_file() -> None:
    assert resolve_method("auto", "auto", has_taesd=True) == "tae"
    assert resolve_method("auto", "auto", has_taesd=False) == "proj"
    assert resolve_method("none", "tae", has_taesd=True) == "none"  # the node turns them off
    assert resolve_method("proj", "vae", has_taesd=False) == "proj"  # for every model
    assert resolve_method("auto", "vae", has_taesd=False) == "vae"  # else the model's own


def test_a_latent_sized_frame_is_scaled_to_the_requested_size() -> None:
    frame = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    image = frame_to_image(frame, (64, 48))
    assert image.size == (64, 48) and image.mode == "RGB"


def parse(raw: bytes) -> tuple[str, dict[str, object]]:
    assert raw.endswith(b"\n\n")
    event_line, data_line = raw[:-2].split(b"\n")
    assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
    return event_line[7:].decode(), msgspec.json.decode(data_line[6:])


def test_events_follow_the_wire() -> None:
    fmt = StreamFormat(
        edit=True, size="64x64", quality="auto", background="opaque", output_format="png", seed=7
    )
    name, data = parse(fmt.partial("QUJD", image_index=1, partial_index=0))
    assert name == data["type"] == "image_edit.partial_image"
    assert data["partial_image_index"] == 0 and data["image_index"] == 1 and data["seed"] == 8
    assert "usage" not in data
    msgspec.convert(data, ImageStreamEvent)
    name, data = parse(fmt.completed("QUJD", image_index=0))
    assert name == "image_edit.completed" and data["seed"] == 7 and "partial_image_index" not in data
    assert data["image_index"] == 0  # always there, also for the first image
    assert data["usage"] == {
        "input_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 0,
    }
    name, data = parse(error_event(OpenAIError(400, "bad", param="loras", code="lora_not_found")))
    assert name == "error" and data["type"] == "error"
    assert data["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "loras",
        "code": "lora_not_found",
    }
