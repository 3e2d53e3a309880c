"""The router's metrics as the request log feeds them (``Metrics.observe_request``): route labels
are full path templates, and each model the router knows gets its own series."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmlb_core.router.balancer import Balancer
from llmlb_core.router.metrics import UNMATCHED, Metrics
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.server.access_log import RequestRecord
from llmlb_core.storage.sqlite import Store


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[Metrics]:
    store = Store(tmp_path / "db.sqlite3")
    nodes = NodeRegistry(store, timeout_s=60)
    yield Metrics(nodes, Balancer(nodes, queue_max=1, queue_timeout_s=1))
    store.close()


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def record(route: str, status: int = 200, *, method: str = "POST", **fields: object) -> RequestRecord:
    rec = RequestRecord("r", method, route=route, status=status, duration_s=0.5)
    for key, val in fields.items():
        setattr(rec, key, val)
    return rec


def test_routes_are_labelled_with_their_full_template_and_unmatched_paths_share_one_label(
    metrics: Metrics,
) -> None:
    metrics.observe_request(record("/v0/nodes/{node_id}", method="DELETE"))
    metrics.observe_request(record("/v0/nodes/{node_id}", method="DELETE"))
    metrics.observe_request(record("/no/such/path/1", 404, method="GET", matched=False))
    metrics.observe_request(record("/no/such/path/2", 404, method="GET", matched=False))
    assert (
        value(metrics, "llmlb_requests_total", method="DELETE", route="/v0/nodes/{node_id}", status="200")
        == 2
    )
    assert value(metrics, "llmlb_requests_total", method="GET", route=UNMATCHED, status="404") == 2
    assert value(metrics, "llmlb_request_duration_seconds_count", route="/v0/nodes/{node_id}") == 2
    assert not any("/no/such" in str(labels) for _, labels in samples(metrics))


def test_a_models_requests_errors_latency_queue_wait_images_and_speed(metrics: Metrics) -> None:
    route = "/v1/images/generations"
    metrics.observe_request(
        record(route, model="sd", queue_wait_s=0.2, images=2, generation_s=4.0, steps=40, duration_s=4.5)
    )
    metrics.observe_request(record(route, model="sd", images=1, generation_s=1.0, steps=20, duration_s=1.2))
    metrics.observe_request(record(route, 503, model="sd"))
    metrics.observe_request(record(route, 400))  # no model known: no model series
    assert value(metrics, "llmlb_model_requests_total", model="sd") == 3
    assert value(metrics, "llmlb_model_errors_total", model="sd", status="503") == 1
    assert value(metrics, "llmlb_model_request_duration_seconds_sum", model="sd") == pytest.approx(6.2)
    assert value(metrics, "llmlb_model_queue_wait_seconds_sum", model="sd") == pytest.approx(0.2)
    assert value(metrics, "llmlb_model_queue_wait_seconds_count", model="sd") == 3
    assert value(metrics, "llmlb_model_images_total", model="sd") == 3
    assert value(metrics, "llmlb_model_generation_seconds_sum", model="sd") == pytest.approx(5.0)
    assert value(metrics, "llmlb_model_generation_seconds_count", model="sd") == 2
    assert value(metrics, "llmlb_model_steps_total", model="sd") == 60
    assert value(metrics, "llmlb_model_steps_per_second", model="sd") == pytest.approx(20.0)  # the last one
    assert value(metrics, "llmlb_requests_total", method="POST", route=route, status="400") == 1
    assert not any(name.startswith("llmlb_model_") and not labels for name, labels in samples(metrics))
