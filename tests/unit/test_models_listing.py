"""What the model registry knows and says: ``/v0/models`` entries (every model, with where it
runs), descriptions, and the answer for a model no online node serves (503 saying where it was
last seen, or 404 when it was never seen or not for a day).

Real registries on SQLite in tmp_path; nodes register, heartbeat, drain and deregister through the
registry's own methods; the clocks are injected so that "offline" and "a day later" need no sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb_core.protocol import MAX_DESCRIPTION_CHARS, ModelAdvert, NodeRegistration
from llmlb_core.router.models import FORGET_GONE_AFTER_S, ModelRegistry, ago
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.server.errors import ModelNotFound, NoCapableNodes, OpenAIError
from llmlb_core.storage.sqlite import Store

IMAGES = frozenset({"image_generation"})
CHAT = frozenset({"chat_completion"})
TIMEOUT_S = 60.0


class Clocks:
    """The node registry's monotonic clock and the model registry's wall clock, moved together."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = time.time()  # the registries stamp some rows with the real time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class Registries:
    def __init__(self, path: Path, clocks: Clocks) -> None:
        self.path = path
        self.clocks = clocks
        self.store = Store(path)
        self.nodes = NodeRegistry(self.store, timeout_s=TIMEOUT_S, clock=lambda: clocks.mono)
        self.models = ModelRegistry(self.store, self.nodes, clock=lambda: clocks.wall)

    def add_node(self, name: str, adverts: list[ModelAdvert], node_id: str | None = None) -> None:
        node_id = node_id or name
        self.nodes.register(
            NodeRegistration(
                node_id=node_id,
                name=name,
                base_url=f"http://{name}",
                token="t",
                runtime_types=["fake"],
                models=adverts,
            ),
            owner_key_id="key-1",
        )
        # The registry stamps last_seen_wall with the real time; the test's wall clock rules here.
        node = self.nodes.get(node_id)
        assert node is not None
        node.last_seen_wall = self.clocks.wall

    def restart(self) -> Registries:
        self.store.close()
        return Registries(self.path, self.clocks)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def reg(tmp_path: Path, clocks: Clocks) -> Iterator[Registries]:
    made = Registries(tmp_path / "db.sqlite3", clocks)
    yield made
    made.store.close()


def image(model: str, description: str = "") -> ModelAdvert:
    return ModelAdvert(
        id=model, capabilities=["image_generation"], runtime="stable_diffusion", description=description
    )


def refusal(models: ModelRegistry, model: str, flags: frozenset[str] = IMAGES) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        models.ensure_servable(model, flags)
    return caught.value


def test_every_known_model_is_listed_with_where_it_runs(reg: Registries, clocks: Clocks) -> None:
    reg.add_node("n1", [image("sd-turbo", "fast"), image("flux")])
    reg.add_node("n2", [image("sd-turbo")])
    reg.models.register("kontext", ["image_generation"], {"steps": 4}, "edits")
    clocks.advance(TIMEOUT_S / 2)
    reg.add_node("n3", [image("flux")])
    clocks.advance(TIMEOUT_S / 2 + 1)  # n1 and n2 are offline now, n3 is not
    reg.nodes.set_draining("n3")
    reg.add_node("n4", [ModelAdvert(id="chat", capabilities=["chat_completion"], runtime="x")])

    entries = {e.id: e for e in reg.models.entries(IMAGES)}  # chat's capability is not enabled
    assert sorted(entries) == ["flux", "kontext", "sd-turbo"]
    turbo, flux, kontext = entries["sd-turbo"], entries["flux"], entries["kontext"]
    assert (turbo.status, turbo.description, turbo.registered) == ("offline", "fast", False)
    assert [(p.node_name, p.status) for p in turbo.nodes] == [("n1", "offline"), ("n2", "offline")]
    assert [(p.node_name, p.status) for p in flux.nodes] == [("n3", "draining"), ("n1", "offline")]
    assert flux.status == "draining" and flux.last_seen_at == clocks.wall - TIMEOUT_S / 2 - 1
    assert (kontext.status, kontext.registered, kontext.defaults, kontext.nodes) == (
        "unserved",
        True,
        {"steps": 4},
        [],
    )
    assert kontext.description == "edits" and kontext.capabilities == ["image_generation"]
    assert [e.id for e in reg.models.entries(CHAT)] == ["chat", "kontext"]
    assert [e.status for e in reg.models.entries(CHAT)] == ["online", "unserved"]


def test_a_models_description_comes_from_the_admin_else_from_its_nodes(reg: Registries) -> None:
    reg.add_node("n1", [image("a", ""), image("b", "from node 1")])
    reg.add_node("n2", [image("a", "from node 2"), image("b", "other")])
    reg.add_node("n3", [image("c", "bell\x07 and\nnewline " + "x" * 5000)])
    reg.models.register("b", ["image_generation"], {}, "the admin's")
    listed = {m.id: m.description for m in reg.models.list(IMAGES)}
    assert listed["a"] == "from node 2"
    assert listed["b"] == "the admin's"
    assert listed["c"].startswith("bell and newline x") and len(listed["c"]) == MAX_DESCRIPTION_CHARS
    assert {e.id: e.description for e in reg.models.entries(IMAGES)} == listed


def test_a_model_whose_node_deregistered_is_a_503_saying_when_and_where(
    reg: Registries, clocks: Clocks
) -> None:
    reg.add_node("sd-node-1", [image("demo")])
    clocks.advance(5)
    reg.nodes.deregister("sd-node-1")
    clocks.advance(120)
    error = refusal(reg.models, "demo")
    assert isinstance(error, NoCapableNodes)
    assert (error.status, error.code, error.param) == (503, "no_capable_nodes", "model")
    assert error.message == (
        "No online node can serve model 'demo' right now "
        "(last seen 2 min ago on node sd-node-1, which has left)"
    )
    # /v1/models/{id} answers the same; /v0/models still lists it, with where it was.
    with pytest.raises(NoCapableNodes):
        reg.models.get("demo", IMAGES)
    [entry] = reg.models.entries(IMAGES)
    assert (entry.id, entry.status, [(p.node_id, p.status) for p in entry.nodes]) == (
        "demo",
        "offline",
        [("sd-node-1", "gone")],
    )
    # A model nobody ever advertised stays a 404, and so does one for a capability not asked for.
    assert isinstance(refusal(reg.models, "demo-typo"), ModelNotFound)
    assert isinstance(refusal(reg.models, "demo", CHAT), ModelNotFound)


def test_a_left_model_is_forgotten_after_a_day_and_remembered_across_a_restart(
    reg: Registries, clocks: Clocks
) -> None:
    reg.add_node("n1", [image("demo")])
    reg.nodes.deregister("n1")
    clocks.advance(2 * 3600)
    restarted = reg.restart()
    try:
        assert "last seen 2 h ago on node n1, which has left" in refusal(restarted.models, "demo").message
        clocks.advance(FORGET_GONE_AFTER_S)
        assert isinstance(refusal(restarted.models, "demo"), ModelNotFound)
        assert restarted.models.entries(IMAGES) == []
        # Nor is it read back after a day.
        again = restarted.restart()
        assert isinstance(refusal(again.models, "demo"), ModelNotFound)
        again.store.close()
    finally:
        restarted.store.close()


def test_offline_and_draining_nodes_are_named_in_the_503(reg: Registries, clocks: Clocks) -> None:
    reg.add_node("n1", [image("demo")])
    clocks.advance(TIMEOUT_S + 20)
    assert refusal(reg.models, "demo").message.endswith("(last seen 80 s ago on node n1, now offline)")
    reg.add_node("n1", [image("demo")])
    reg.add_node("n2", [image("demo")])
    reg.nodes.set_draining("n1")
    reg.nodes.set_draining("n2")
    assert refusal(reg.models, "demo").message.endswith("(draining on node n1, n2)")
    reg.nodes.set_draining("n2", False)
    reg.models.ensure_servable("demo", IMAGES)  # n2 takes it


def test_a_registered_model_no_node_advertised_is_a_503_that_says_so(reg: Registries) -> None:
    reg.models.register("ghost", ["image_generation"], {}, "")
    error = refusal(reg.models, "ghost")
    assert error.status == 503
    assert error.message.endswith("(it is registered, but no node has advertised it yet)")


def test_a_node_back_under_its_id_serves_again_and_is_no_longer_gone(reg: Registries, clocks: Clocks) -> None:
    reg.add_node("n1", [image("demo")])
    reg.nodes.deregister("n1")
    reg.add_node("n1", [image("demo")])
    reg.models.ensure_servable("demo", IMAGES)
    [entry] = reg.models.entries(IMAGES)
    assert [(p.node_id, p.status) for p in entry.nodes] == [("n1", "online")]
    assert entry.status == "online" and entry.last_seen_at == clocks.wall


def test_an_admin_releasing_the_node_makes_its_models_unknown_again(reg: Registries) -> None:
    # A node that left is "unavailable" (503); an admin's removal (DELETE /v0/nodes/{id}, or a
    # deleted endpoint) is deliberate: its models are unknown (404).
    reg.add_node("n1", [image("demo")])
    reg.add_node("n2", [image("other")])
    reg.nodes.deregister("n1")
    reg.nodes.deregister("n2")
    reg.nodes.release("n1")
    assert isinstance(refusal(reg.models, "demo"), ModelNotFound)
    assert isinstance(refusal(reg.models, "other"), NoCapableNodes)
    reg.nodes.release("n2")  # released after it had been remembered as gone
    assert isinstance(refusal(reg.models, "other"), ModelNotFound)
    assert reg.models.entries(IMAGES) == []


def test_a_node_restarted_under_a_new_id_with_its_name_replaces_its_gone_entry(reg: Registries) -> None:
    # A node without --node-id picks a new random id at every start; its name stays.
    reg.add_node("n1", [image("demo")], node_id="n1-aaaa")
    reg.add_node("n2", [image("demo")], node_id="n2-bbbb")
    reg.nodes.deregister("n1-aaaa")
    reg.nodes.deregister("n2-bbbb")
    reg.add_node("n1", [image("demo")], node_id="n1-cccc")
    [entry] = reg.models.entries(IMAGES)
    assert [(p.node_id, p.status) for p in entry.nodes] == [("n1-cccc", "online"), ("n2-bbbb", "gone")]


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.4, "0 s"),
        (89, "89 s"),
        (90, "2 min"),
        (3599, "60 min"),
        (5400, "2 h"),
        (86400, "24 h"),
        (3 * 86400, "3 days"),
    ],
)
def test_ago_reads_like_a_person_would_say_it(seconds: float, said: str) -> None:
    assert ago(seconds) == said
