"""The router's checks of a node's streamed image events (``streaming.PartCheck``), of what nodes
advertise about image models (``model_info``), and of the edit form's ``loras`` extra.

Events are built as the node writes them (``tests.support.fake_node.image_event``, the wire of
issue 10) and then spoiled one way at a time; each spoiled one must be a ``BadAnswer`` (which the
forwarder turns into an error event and a suspect node).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from llmlb_core.api import OpenAIError, ParsedForm, SSEEvent
from llmlb_core.upstream.client import BadAnswer
from llmlb_plugins.images.answers import answer_limit
from llmlb_plugins.images.model_info import (
    MAX_SIDE,
    ModelInfo,
    check_loras,
    check_mask,
    check_references,
    describe_model,
    model_info,
    read_details,
)
from llmlb_plugins.images.planning import Part
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageModelDefaults,
    ImageModelDetails,
    ImageModelSupports,
    LoraRef,
)
from llmlb_plugins.images.streaming import PartCheck, StreamSpec
from llmlb_plugins.images.validation import form_request, form_value, images_allowed
from tests.support.fake_node import image_event, image_events, png_b64
from tests.support.images_util import gradient, png_bytes

GEN = StreamSpec(edit=False, partial_images=2, output_format="png", size="64x64")


def as_sse(event: dict[str, Any], name: str | None = None) -> SSEEvent:
    return SSEEvent(name or event["type"], json.dumps(event).encode())


def run(check: PartCheck, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event through the check, then its end; what the client gets, decoded."""
    out = []
    for event in events:
        written = check.event(as_sse(event))
        head, _, data = written.partition(b"\ndata: ")
        assert head == b"event: " + event["type"].encode() and data.endswith(b"\n\n")
        out.append(json.loads(data))
    check.end()
    return out


def test_well_formed_events_pass_with_image_index_moved_by_the_offset() -> None:
    events = image_events(2, 2, seed=7)
    out = run(PartCheck(GEN, Part(offset=3, count=2)), events)
    assert [(e["type"].rsplit(".", 1)[1], e["image_index"], e.get("partial_image_index")) for e in out] == [
        ("partial_image", 3, 0),
        ("partial_image", 3, 1),
        ("completed", 3, None),
        ("partial_image", 4, 0),
        ("partial_image", 4, 1),
        ("completed", 4, None),
    ]
    for sent, got in zip(events, out, strict=True):
        assert got["b64_json"] == sent["b64_json"] and got["seed"] == sent["seed"]
        assert got.get("usage") == sent.get("usage")


def test_fewer_partials_than_asked_are_fine_and_edits_use_their_types() -> None:
    spec = StreamSpec(edit=True, partial_images=3, output_format="png", size="64x64")
    events = image_events(1, 1, edit=True)
    assert [e["type"] for e in run(PartCheck(spec, Part(0, 1)), events)] == [
        "image_edit.partial_image",
        "image_edit.completed",
    ]


def test_images_of_a_part_may_interleave() -> None:
    a, b = image_events(1, 1), image_events(1, 1)
    for event in b:
        event["image_index"] = 1
    run(PartCheck(GEN, Part(0, 2)), [a[0], b[0], b[1], a[1]])


def spoiled(**changes: Any) -> list[dict[str, Any]]:
    events = image_events(1, 2)
    events[1].update(changes)
    return [e for e in events if e]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_STREAMS = {
    "unknown field": spoiled(evil=1),
    "missing field": [{k: v for k, v in e.items() if k != "size"} for e in image_events(1, 0)],
    "bad base64": spoiled(b64_json="@@@not base64@@@"),
    "truncated base64": spoiled(b64_json=png_b64()[:-3]),
    "not a png": spoiled(b64_json=b64(b"<script>x</script>")),
    "jpeg where png was asked": spoiled(b64_json=b64(b"\xff\xd8\xff\xe0rest")),
    "wrong output_format": spoiled(output_format="jpeg"),
    "html output_format": spoiled(output_format="html"),
    "wrong size": spoiled(size="128x128"),
    "CRLF in size": spoiled(size="64x64\r\nx-evil: 1"),
    "edit type on generations": spoiled(type="image_edit.partial_image"),
    "unknown type": spoiled(type="image_generation.done"),
    "image_index out of the part": spoiled(image_index=1),
    "negative image_index": spoiled(image_index=-1),
    "too many partials": spoiled(partial_image_index=2),
    "partials out of order": spoiled(partial_image_index=0),
    "partial without its index": spoiled(partial_image_index=None),
    "partial with usage": spoiled(usage={"input_tokens": 0}),
    "completed without usage": [{**image_events(1, 0)[0], "usage": None}],
    "completed with a partial index": [{**image_events(1, 0)[0], "partial_image_index": 0}],
    "two completed": image_events(1, 1) + image_events(1, 0),
    "partial after completed": image_events(1, 1) + image_events(1, 1)[:1],
    "missing completed": image_events(1, 2)[:2],
    "no events at all": [],
    "created_at not an int": spoiled(created_at="now"),
    "quality not one of OpenAI's": spoiled(quality="ultra"),
    "seed below 0": spoiled(seed=-1),
    "nested junk": spoiled(usage={"input_tokens": [[[[]]]]}),
}


@pytest.mark.parametrize("events", list(BAD_STREAMS.values()), ids=list(BAD_STREAMS))
def test_every_bad_stream_is_refused(events: list[dict[str, Any]]) -> None:
    with pytest.raises(BadAnswer):
        run(PartCheck(GEN, Part(0, 1)), events)


def test_the_event_line_must_name_the_type_of_the_data() -> None:
    event = image_event("completed")
    with pytest.raises(BadAnswer, match="data says"):
        PartCheck(GEN, Part(0, 1)).event(as_sse(event, name="image_generation.partial_image"))
    with pytest.raises(BadAnswer, match="expected image_generation"):
        PartCheck(GEN, Part(0, 1)).event(as_sse(event, name="message"))


@pytest.mark.parametrize("data", [b"not json", b"[]", b"\xff\xfe", b"{" * 10_000])
def test_unreadable_data_is_refused(data: bytes) -> None:
    with pytest.raises(BadAnswer, match="not an image stream event"):
        PartCheck(GEN, Part(0, 1)).event(SSEEvent("image_generation.completed", data))


def test_auto_size_takes_any_size_within_the_bound() -> None:
    spec = StreamSpec(edit=False, partial_images=0, output_format="png", size=None)
    run(PartCheck(spec, Part(0, 1)), image_events(1, 0, size="1024x768"))
    for size in (f"{MAX_SIDE + 1}x64", "0x64", "64x99999"):
        with pytest.raises(BadAnswer):
            run(PartCheck(spec, Part(0, 1)), image_events(1, 0, size=size))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_other_output_formats_need_a_whole_file_of_their_own(fmt: str) -> None:
    spec = StreamSpec(edit=False, partial_images=0, output_format=fmt, size="64x64")
    data = png_bytes(gradient(64, 64), fmt.upper())
    good = [image_event("completed", output_format=fmt, b64_json=b64(data))]
    run(PartCheck(spec, Part(0, 1)), good)
    for bad in (png_b64(), b64(data[:4] + b"rest"), b64(data + b"<html>")):
        with pytest.raises(BadAnswer):
            run(PartCheck(spec, Part(0, 1)), [{**good[0], "b64_json": bad}])


# --- model_info: node adverts' details, untrusted --------------------------------------------
def node_details(**supports: Any) -> dict[str, Any]:
    base = {"mask": True, "reference_images": 4, "loras": ["pixel", "ink"], "partial_images": True}
    return {
        "family": "flux_kontext",
        "label": "FLUX.1 Kontext",
        "native_size": "1024x1024",
        "supports": base | supports,
    }


def test_describe_merges_the_nodes_conservatively() -> None:
    one = node_details()
    two = node_details(reference_images=2, loras=["ink", "sketch"], mask=False)
    assert describe_model([one, two]) == {
        "family": "flux_kontext",
        "label": "FLUX.1 Kontext",
        "native_size": "1024x1024",
        "supports": {"mask": False, "reference_images": 2, "loras": ["ink"], "partial_images": True},
    }


def test_the_router_reads_the_details_struct_the_node_writes() -> None:
    """The node writes ``ImageModelDetails`` as JSON (what its runtime puts in the advert); the
    router reads the same struct back, value by value."""
    written = ImageModelDetails(
        family="flux_kontext",
        label="FLUX.1 Kontext",
        native_size="1024x1024",
        defaults=ImageModelDefaults(steps=20, cfg_scale=1.0, guidance=2.5, sampler="euler"),
        supports=ImageModelSupports(
            mask=True, reference_images=4, loras=["ink", "pixel"], partial_images=True
        ),
        weights=["model.safetensors"],
    )
    wire = msgspec.json.decode(msgspec.json.encode(written))
    assert wire == node_details(loras=["ink", "pixel"]) | {
        "defaults": {"steps": 20, "cfg_scale": 1.0, "guidance": 2.5, "sampler": "euler"},
        "weights": ["model.safetensors"],
    }
    read = read_details(wire)
    assert read == msgspec.structs.replace(written, defaults=None, weights=None)  # for operators only
    assert read_details("not a mapping") == ImageModelDetails()


HOSTILE_DETAILS: list[Any] = [
    {"family": "../etc", "label": "x" * 1000, "native_size": "99999x1", "supports": "yes"},
    {"family": 5, "label": "\x1b[31mred", "native_size": [64, 64], "supports": {"mask": 1}},
    {"supports": {"reference_images": True, "loras": "pixel", "partial_images": "true"}},
    {"supports": {"reference_images": -3, "loras": [1, None, "../x", "a/b", {"n": 1}]}},
    {"supports": {"reference_images": 10**30}},
    {"native_size": "64x64\n", "family": "sd1\n"},
    "not a mapping",
    {},
]


@pytest.mark.parametrize("details", HOSTILE_DETAILS)
def test_hostile_details_never_break_describe(details: Any) -> None:
    described = describe_model([details])
    msgspec.json.encode(described)  # always JSON
    supports = described.get("supports", {})
    assert supports.get("loras", []) == []
    assert supports.get("reference_images", 0) in range(0, 17)
    assert "family" not in described and "label" not in described and "native_size" not in described
    assert set(supports) <= {"loras", "reference_images"}


def test_unknown_features_are_not_shown_nor_checked() -> None:
    info = model_info([{"native_size": "512x512"}])
    assert info == ModelInfo(native_size=(512, 512))
    assert describe_model([{"native_size": "512x512"}]) == {"native_size": "512x512"}
    check_loras("m", info, [LoraRef(name="anything")])  # the node checks
    check_mask("m", info)
    assert images_allowed(info.reference_images) == 16
    # A node that says nothing is left out of the merge; one that does speaks for the feature.
    merged = model_info([{}, node_details(reference_images=0)])
    assert merged.reference_images == 0 and images_allowed(merged.reference_images) == 1


class Catalog:
    """A ModelCatalog over fixed adverts (model -> each node's details)."""

    def __init__(self, adverts: dict[str, list[dict[str, Any]]]) -> None:
        self.adverts = adverts

    def defaults(self, model: str) -> dict[str, Any]:
        return {}

    def online(self, flags: frozenset[str]) -> list[str]:
        return sorted(self.adverts)

    def idle_nodes(self, model: str, flags: frozenset[str]) -> int:
        return 1

    def details(self, model: str, flags: frozenset[str]) -> list[dict[str, Any]]:
        return self.adverts.get(model, [])


def test_too_many_images_name_the_limit_and_the_models_that_take_references() -> None:
    catalog = Catalog(
        {
            "sd": [node_details(reference_images=0)],
            "kontext": [node_details(reference_images=4)],
            "qwen-edit": [node_details(reference_images=3), node_details(reference_images=16)],
        }
    )
    sd = model_info(catalog.details("sd", frozenset()))
    check_references(catalog, "sd", sd, 1)
    with pytest.raises(OpenAIError) as caught:
        check_references(catalog, "sd", sd, 2)
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "image", "too_many_images")
    assert "model 'sd' takes one image and no reference images" in error.message
    assert "kontext (up to 4), qwen-edit (up to 3)" in error.message
    kontext = model_info(catalog.details("kontext", frozenset()))
    check_references(catalog, "kontext", kontext, 4)
    with pytest.raises(OpenAIError, match="takes at most 4 image") as caught:
        check_references(catalog, "kontext", kontext, 5)
    assert "kontext (up to" not in caught.value.message  # not itself


def test_unknown_loras_are_a_400_listing_the_available_ones() -> None:
    info = model_info([node_details(loras=["pixel", "ink"]), node_details(loras=["ink", "pixel", "x"])])
    check_loras("m", info, [LoraRef(name="ink", weight=0.5)])
    with pytest.raises(OpenAIError) as caught:
        check_loras("m", info, [LoraRef(name="ink"), LoraRef(name="x")])
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "loras", "lora_not_found")
    assert error.message == "Unknown LoRA 'x' for model 'm'; available: ink, pixel"
    with pytest.raises(OpenAIError, match="available: none"):
        check_loras("m", model_info([node_details(loras=[])]), [LoraRef(name="ink")])


def test_a_mask_for_a_model_without_mask_edits_is_a_400() -> None:
    with pytest.raises(OpenAIError) as caught:
        check_mask("m", model_info([node_details(mask=False)]))
    assert (caught.value.param, caught.value.code) == ("mask", "mask_not_supported")


# --- answer bounds for auto -------------------------------------------------------------------
def test_auto_is_bounded_by_the_advertised_native_size() -> None:
    largest = answer_limit("1792x1024", 1)
    assert answer_limit("auto", 1) == largest  # nothing advertised
    per_2048 = answer_limit("auto", 2, (2048, 2048)) - answer_limit("auto", 1, (2048, 2048))
    assert per_2048 == 2048 * 2048 * 4 * 4 // 3 + 256 * 1024  # every pixel as RGBA in base64
    assert answer_limit("auto", 1, (2048, 2048)) > largest > answer_limit("auto", 1, (512, 512))
    assert answer_limit("auto", 1, (10**6, 10**6)) == answer_limit("auto", 1, (MAX_SIDE, MAX_SIDE))
    assert answer_limit("512x512", 1, (2048, 2048)) == answer_limit("512x512", 1)  # a size is a size


# --- the loras extra in a form ----------------------------------------------------------------
def form(*items: tuple[str, str]) -> ParsedForm:
    return ParsedForm(fields=dict(items), items=list(items))


def test_form_loras_from_the_sdk_fields_and_from_json() -> None:
    sdk = form(
        ("prompt", "p"),
        ("loras[][name]", "a"),
        ("loras[][name]", "b"),
        ("loras[][weight]", "0.5"),
        ("loras[][name]", "c"),
    )
    assert form_request(sdk, ImageEditFields).loras == [
        LoraRef(name="a"),
        LoraRef(name="b", weight=0.5),
        LoraRef(name="c"),
    ]
    text = form(("prompt", "p"), ("loras", form_value([{"name": "a", "weight": 2.0}])))
    assert form_request(text, ImageEditFields).loras == [LoraRef(name="a", weight=2.0)]
    assert form_request(form(("prompt", "p")), ImageEditFields).loras is None


@pytest.mark.parametrize(
    "items",
    [
        [("loras", "not json")],
        [("loras", '[{"name": "../etc/passwd"}]')],
        [("loras", '[{"name": "a", "weight": 99}]')],
        [("loras", '{"name": "a"}')],
        [("loras", "[" * 100 + "]" * 100)],
        [("loras[][name]", "a/b")],
        [("loras[][weight]", "heavy")],
        [("loras", "[" + ",".join(['{"name": "a"}'] * 9) + "]")],
    ],
)
def test_bad_form_loras_are_a_400_naming_loras(items: list[tuple[str, str]]) -> None:
    with pytest.raises(OpenAIError) as caught:
        form_request(form(("prompt", "p"), *items), ImageEditFields)
    assert caught.value.status == 400 and caught.value.param == "loras"


def test_form_values_for_a_node() -> None:
    assert [form_value(v) for v in (True, False, 3, 0.5, "x")] == ["true", "false", "3", "0.5", "x"]
    assert form_value([{"name": "a", "weight": 1.0}]) == '[{"name":"a","weight":1.0}]'
