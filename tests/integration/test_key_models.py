"""Keys limited to some models (issue 20, first part): a key created with ``models`` gets 403
``model_not_allowed`` (naming the models it may use) for any other model, before any node
works on it, and ``/v1/models`` lists only its models; ``PATCH /v0/keys/{id}`` changes the list
(``null``: every model), and ``llmlb keys create/update --models`` do the same. A real router
on loopback, a fake node (tests/support/fake_node.py) that answers every generation it gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli_runs import run_cli
from tests.support.fake_node import FakeNode, images_answer
from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key, wait_until

GENERATIONS = "/v1/images/generations"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def advert(model: str) -> dict[str, object]:
    return {
        "id": model,
        "capabilities": ["image_generation"],
        "runtime": "stable_diffusion",
        "details": {"family": "sd1", "label": model, "native_size": "64x64", "supports": {}},
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ThreadServer, FakeNode]]:
    router = start_router(tmp_path / "data")
    node = FakeNode(router.url, create_key(router.url, ["node"]), "n1", [advert("sd-a"), advert("sd-b")])
    node.start()
    try:
        node.answers[GENERATIONS] = images_answer(1)
        wait_until(lambda: len(models_seen(router, ADMIN_KEY)) == 2, 10, "both models listed")
        yield router, node
    finally:
        node.stop()
        router.stop()


def models_seen(router: ThreadServer, key: str) -> list[str]:
    answer = httpx.get(f"{router.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
    return sorted(m["id"] for m in answer.json()["data"])


def generate(router: ThreadServer, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{router.url}{GENERATIONS}",
        json={"model": model, "prompt": "p"},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_a_key_uses_only_its_models(served: tuple[ThreadServer, FakeNode]) -> None:
    router, node = served
    made = httpx.post(
        f"{router.url}/v0/keys", json={"name": "team-a", "scopes": ["api"], "models": ["sd-a"]}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["info"]["id"]
    assert made.json()["info"]["models"] == ["sd-a"]
    assert models_seen(router, key) == ["sd-a"]
    assert generate(router, key, "sd-a").status_code == 200
    sent = len(node.received)
    refused = generate(router, key, "sd-b")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert "'sd-b'" in error["message"] and "sd-a" in error["message"]
    assert len(node.received) == sent  # refused before any node saw it
    one = httpx.get(f"{router.url}/v1/models/sd-b", headers={"authorization": f"Bearer {key}"}, timeout=5)
    assert one.status_code == 403

    # Widened, then opened to every model.
    widened = httpx.patch(f"{router.url}/v0/keys/{key_id}", json={"models": ["sd-b", "sd-a"]}, headers=ADMIN)
    assert widened.status_code == 200 and widened.json()["models"] == ["sd-a", "sd-b"]
    assert generate(router, key, "sd-b").status_code == 200
    opened = httpx.patch(f"{router.url}/v0/keys/{key_id}", json={"models": None}, headers=ADMIN)
    assert opened.status_code == 200 and opened.json()["models"] is None
    assert models_seen(router, key) == ["sd-a", "sd-b"]
    # A key with an empty list may use nothing.
    httpx.patch(f"{router.url}/v0/keys/{key_id}", json={"models": []}, headers=ADMIN).raise_for_status()
    assert models_seen(router, key) == []
    assert generate(router, key, "sd-a").json()["error"]["code"] == "model_not_allowed"


@pytest.mark.parametrize(
    "body",
    [{"models": "sd-a"}, {"models": [""]}, {"models": ["x" * 300]}, {"models": [1]}, {}],
)
def test_bad_model_lists_are_a_400(served: tuple[ThreadServer, FakeNode], body: dict[str, object]) -> None:
    router, _ = served
    key_id = httpx.get(f"{router.url}/v0/keys", headers=ADMIN).json()["data"][0]["id"]
    answer = httpx.patch(f"{router.url}/v0/keys/{key_id}", json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    unknown = httpx.patch(f"{router.url}/v0/keys/no-such-key", json={"models": None}, headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "key_not_found"


def test_the_cli_sets_and_changes_a_keys_models(
    served: tuple[ThreadServer, FakeNode], tmp_path: Path
) -> None:
    router, _ = served
    env = {"LLMLB_ROUTER": router.url, "LLMLB_ADMIN_KEY": ADMIN_KEY}
    created = run_cli("keys", "create", "cli-team", "--models", "sd-a, sd-b", "--json", cwd=tmp_path, env=env)
    assert created.code == 0, created.err
    key_id = next(k["id"] for k in httpx.get(f"{router.url}/v0/keys", headers=ADMIN).json()["data"]
                  if k["name"] == "cli-team")  # fmt: skip
    narrowed = run_cli("keys", "update", key_id, "--models", "sd-b", cwd=tmp_path, env=env)
    assert narrowed.code == 0 and "sd-b" in narrowed.out, narrowed.err
    listing = run_cli("keys", "list", cwd=tmp_path, env=env)
    assert "sd-b" in next(line for line in listing.out.splitlines() if "cli-team" in line)
    opened = run_cli("keys", "update", key_id, "--all-models", cwd=tmp_path, env=env)
    assert opened.code == 0 and "every model" in opened.out
    neither = run_cli("keys", "update", key_id, cwd=tmp_path, env=env)
    assert neither.code == 2 and "--models" in neither.err and "Traceback" not in neither.err
