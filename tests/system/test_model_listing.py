"""Finding out what exists, as a user and an admin see it: a real router and a real
stable_diffusion node serving the demo model.

- model.toml's ``description`` reaches ``/v1/models`` (the official SDK) and ``/v0/models``;
- ``/v0/models`` lists every model with where it runs, also when ``/v1/models`` is empty;
- a model whose node deregistered cleanly is a 503 ``no_capable_nodes`` saying where and when it
  was last seen, not a 404; a model nobody ever served stays a 404.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.support.servers import ADMIN_KEY, Proc, admin_get, wait_until

DEMO_DESCRIPTION = "synthetic SD1 tiny U-Net (random weights)"  # the demo model's model.toml


def test_models_are_listed_with_their_description_and_where_they_run(
    router: Proc, sd_node: Proc, api_key: str
) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key)
    [model] = client.models.list().data
    assert model.id == "demo"
    assert model.model_extra is not None and model.model_extra["description"] == DEMO_DESCRIPTION
    [entry] = admin_get(router.url, "/v0/models")["data"]
    assert (entry["id"], entry["status"], entry["description"]) == ("demo", "online", DEMO_DESCRIPTION)
    assert entry["capabilities"] == ["image_generation"] and entry["registered"] is False
    assert [(n["node_name"], n["status"]) for n in entry["nodes"]] == [("sd-node-1", "online")]
    assert entry["details"]["native_size"] == "64x64"
    # An admin's description wins over the node's, and the model is then also "registered".
    registered = httpx.post(
        f"{router.url}/v0/models",
        headers={"x-api-key": ADMIN_KEY},
        json={"id": "demo", "capabilities": ["image_generation"], "description": "the house model"},
    )
    assert registered.status_code == 201
    assert client.models.retrieve("demo").model_extra["description"] == "the house model"  # type: ignore[index]
    [entry] = admin_get(router.url, "/v0/models")["data"]
    assert (entry["registered"], entry["description"]) == (True, "the house model")


def test_a_model_whose_node_left_is_a_503_that_says_where_it_was(
    router: Proc, sd_node: Proc, api_key: str
) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0)
    assert sd_node.stop() == 0  # SIGTERM: the node deregisters cleanly
    wait_until(lambda: admin_get(router.url, "/v0/nodes")["data"] == [], 10, "node deregistered")
    assert client.models.list().data == []

    with pytest.raises(openai.InternalServerError) as gone:
        client.images.generate(model="demo", prompt="a lighthouse", size="auto")  # type: ignore[arg-type]
    assert gone.value.status_code == 503 and gone.value.code == "no_capable_nodes"
    message = gone.value.body["message"]  # type: ignore[index]
    assert re.search(
        r"model 'demo' right now \(last seen \d+ s ago on node sd-node-1, which has left\)", message
    )
    with pytest.raises(openai.InternalServerError):
        client.models.retrieve("demo")

    # The admin still sees it, and where it was.
    [entry] = admin_get(router.url, "/v0/models")["data"]
    assert (entry["id"], entry["status"], entry["description"]) == ("demo", "offline", DEMO_DESCRIPTION)
    assert [(n["node_name"], n["status"]) for n in entry["nodes"]] == [("sd-node-1", "gone")]
    # A model nobody ever served is still a 404 that reads like one.
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dmeo", prompt="a lighthouse", size="auto")  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found"
