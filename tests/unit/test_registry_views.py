"""What the registries show: each model's ``details`` from the capabilities' ``describe_model``
(``/v1/models``), and each node's running jobs from its heartbeats (``/v0/nodes``).

Real registries on SQLite in tmp_path; nodes are registered and heartbeat through the registry's
own methods with messages decoded as the node API decodes them (msgspec, strict).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmlb_core.protocol import MAX_REPORTED_JOBS, Heartbeat, JobProgress, ModelAdvert, NodeRegistration
from llmlb_core.router.models import Describer, ModelRegistry
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.storage.sqlite import Store
from llmlb_plugins.images.model_info import describe_model

IMAGES = frozenset({"image_generation"})
CHAT = frozenset({"chat_completion"})


class Registries:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(tmp_path / "db.sqlite3")
        self.nodes = NodeRegistry(self.store, timeout_s=60)
        self.models = ModelRegistry(self.store, self.nodes)

    def add_node(self, name: str, adverts: list[ModelAdvert]) -> None:
        self.nodes.register(
            NodeRegistration(
                node_id=name,
                name=name,
                base_url=f"http://{name}",
                token="t",
                runtime_types=["fake"],
                models=adverts,
            )
        )


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registries]:
    made = Registries(tmp_path)
    yield made
    made.store.close()


def image_advert(model: str, **details: Any) -> ModelAdvert:
    return ModelAdvert(
        id=model, capabilities=["image_generation"], runtime="stable_diffusion", details=details
    )


def test_models_get_the_details_their_capabilities_describe(reg: Registries) -> None:
    reg.models.describe_with([Describer("images", IMAGES, describe_model)])
    supports = {"mask": True, "reference_images": 4, "loras": ["a", "b"], "partial_images": True}
    reg.add_node(
        "n1", [image_advert("kontext", family="flux_kontext", native_size="1024x1024", supports=supports)]
    )
    reg.add_node(
        "n2",
        [
            image_advert("kontext", family="flux_kontext", supports={**supports, "loras": ["b"]}),
            ModelAdvert(id="chat", capabilities=["chat_completion"], runtime="openai_compatible"),
        ],
    )
    listed = {m.id: m for m in reg.models.list(IMAGES | CHAT)}
    assert listed["kontext"].nodes == 2
    assert listed["kontext"].details == {
        "family": "flux_kontext",
        "native_size": "1024x1024",
        "supports": {"mask": True, "reference_images": 4, "loras": ["b"], "partial_images": True},
    }
    assert listed["chat"].details == {}  # images does not describe a chat model
    assert reg.models.online(IMAGES) == ["kontext"]
    assert [d["family"] for d in reg.models.details("kontext", IMAGES)] == ["flux_kontext"] * 2


def test_a_describer_that_fails_is_skipped_and_logged_once(
    reg: Registries, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        raise KeyError("family")

    def not_a_dict(details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return ["nope"]  # type: ignore[return-value]

    def good(details: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"count": len(details)}

    reg.models.describe_with(
        [
            Describer("broken", IMAGES, broken),
            Describer("odd", IMAGES, not_a_dict),
            Describer("ok", IMAGES, good),
        ]
    )
    reg.add_node("n1", [image_advert("m1"), image_advert("m2")])
    for _ in range(3):
        assert [m.details for m in reg.models.list(IMAGES)] == [{"count": 1}, {"count": 1}]
    warnings = [r.getMessage() for r in caplog.records if "could not describe" in r.getMessage()]
    assert len(warnings) == 2 and "broken" in warnings[0] and "odd" in warnings[1]


def test_heartbeat_jobs_show_in_the_node_view(reg: Registries) -> None:
    reg.add_node("n1", [image_advert("m1")])
    beat = msgspec.json.decode(
        msgspec.json.encode(
            {
                "node_id": "n1",
                "active_jobs": 1,
                "jobs": [{"model": "m1", "step": 3, "steps": 20, "image": 2, "images": 4, "elapsed_s": 1.5}],
            }
        ),
        type=Heartbeat,
    )
    assert reg.nodes.heartbeat(beat)
    node = reg.nodes.get("n1")
    assert node is not None
    view = msgspec.to_builtins(reg.nodes.view(node))
    assert view["jobs"] == [
        {"model": "m1", "step": 3, "steps": 20, "image": 2, "images": 4, "elapsed_s": 1.5}
    ]
    # The next heartbeat replaces them; a node that went offline shows none.
    assert reg.nodes.heartbeat(Heartbeat(node_id="n1"))
    assert reg.nodes.view(node).jobs == []
    reg.nodes.heartbeat(Heartbeat(node_id="n1", jobs=[JobProgress(model="m1", step=1, steps=2)]))
    reg.nodes.mark_down(node, "test")
    assert reg.nodes.view(node).jobs == []


@pytest.mark.parametrize(
    "jobs",
    [
        [{"model": "m", "step": 1}] * (MAX_REPORTED_JOBS + 1),
        [{"model": "", "step": 1}],
        [{"model": "m" * 257}],
        [{"model": "m", "step": -1}],
        [{"model": "m", "elapsed_s": -0.5}],
        [{"model": "m", "steps": "20"}],
        [{"model": "m", "extra": {"deep": [1] * 10}, "step": 10**9}],
    ],
)
def test_reported_jobs_are_bounded(jobs: list[dict[str, Any]]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"node_id": "n1", "jobs": jobs}), type=Heartbeat)
