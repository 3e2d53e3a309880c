"""A node advertises only what its router accepts (issue 17, item 2): a runtime's model whose id
could forge a log line is left out with one line (not the whole registration refused), and a
description goes out on one line and bounded."""

from __future__ import annotations

import logging

import msgspec
import pytest

from llmlb_core.protocol import MAX_DESCRIPTION_CHARS, ModelAdvert, NodeRegistration
from llmlb_node.agent import RouterLink
from llmlb_node.runtime import Runtime, RuntimeLoad
from llmlb_node.settings import NodeSettings


class Listing(Runtime):
    type_name = "listing"

    def __init__(self, adverts: list[ModelAdvert], loaded: list[str]) -> None:
        self.adverts = adverts
        self.loaded = loaded

    def models(self) -> list[ModelAdvert]:
        return self.adverts

    def routes(self) -> list:  # type: ignore[type-arg]
        return []

    def load(self) -> RuntimeLoad:
        return RuntimeLoad(loaded_models=self.loaded)


def advert(model_id: str, description: str = "") -> ModelAdvert:
    return ModelAdvert(
        id=model_id, capabilities=["chat_completion"], runtime="listing", description=description
    )


def test_a_model_the_router_would_refuse_is_left_out_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    runtime = Listing(
        [advert("good"), advert("bad\nFORGED"), advert("long", "first line\n\nsecond " + "x" * 3000)],
        loaded=["good", "bad\nFORGED"],
    )
    link = RouterLink(NodeSettings(), [runtime], "token", accelerators=list)
    with caplog.at_level(logging.ERROR, "llmlb.node.agent"):
        registration = link.registration()
        link.registration()
        heartbeat = link.heartbeat_message()
    assert [m.id for m in registration.models] == ["good", "long"]
    description = registration.models[1].description
    assert description.startswith("first line second x") and len(description) == MAX_DESCRIPTION_CHARS
    assert heartbeat.loaded_models == ["good"]
    refused = [r.getMessage() for r in caplog.records if "not advertised" in r.getMessage()]
    assert refused == [
        'model "bad\\nFORGED" of runtime listing is not advertised: a model id must be '
        "1-256 characters from A-Z a-z 0-9 and . _ : / @ + = ~ -"
    ]
    # What the node sends passes the router's own decoder.
    msgspec.json.decode(msgspec.json.encode(registration), type=NodeRegistration)
