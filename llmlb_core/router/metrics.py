"""Prometheus metrics for the router (``GET /metrics``), one registry per app.

- ``llmlb_requests_total{method,route,status}`` and ``llmlb_request_duration_seconds{route}``:
  every HTTP request (route = the handler's full path template, e.g. ``/v0/nodes/{node_id}``,
  so ids do not explode label cardinality; ``unmatched`` for a path no route serves). Fed by the
  request log (:class:`llmlb_core.server.access_log.RequestLogMiddleware`, :meth:`Metrics.observe_request`).
- Per model (requests that named a model the router knows):
  ``llmlb_model_requests_total{model}``, ``llmlb_model_errors_total{model,status}`` (answers
  of 400 and up; 499 is a client that left), ``llmlb_model_request_duration_seconds{model}``,
  ``llmlb_model_queue_wait_seconds{model}`` (time waiting for a free slot),
  ``llmlb_model_images_total{model}``, ``llmlb_model_generation_seconds{model}`` (the nodes' own
  generation time per request, as they report it), ``llmlb_model_steps_total{model}`` and
  ``llmlb_model_steps_per_second{model}`` (of the last request that reported both; over time:
  ``rate(steps_total) / rate(generation_seconds_sum)``).
- ``llmlb_upstream_requests_total{node,outcome}`` and ``llmlb_upstream_duration_seconds{node}``:
  calls from the router to nodes and endpoints (outcome: ok, client_error, failed).
- Read at scrape time from live state: ``llmlb_queue_depth``, ``llmlb_queued_total``,
  ``llmlb_node_up{node,name,status}``, ``llmlb_node_slots``, ``llmlb_node_inflight``,
  ``llmlb_node_abandoned`` (jobs whose client left, counted until the node reports them ended),
  ``llmlb_node_completed_total``, ``llmlb_node_failures_recent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from llmlb_core.router.balancer import Balancer
    from llmlb_core.router.nodes import NodeRegistry
    from llmlb_core.server.access_log import RequestRecord

# Image generations take seconds to minutes: buckets reach 15 minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# The route label of a request no route served (its path is not a label: any client picks it).
UNMATCHED = "unmatched"


class _LiveState(Collector):
    def __init__(self, nodes: NodeRegistry, balancer: Balancer) -> None:
        self._nodes = nodes
        self._balancer = balancer

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "llmlb_queue_depth", "Requests waiting for a free slot", value=self._balancer.queue_depth
        )
        yield CounterMetricFamily(
            "llmlb_queued", "Requests that had to wait for a slot", value=self._balancer.total_queued
        )
        up = GaugeMetricFamily(
            "llmlb_node_up", "1 when the node takes traffic", labels=["node", "name", "status"]
        )
        slots = GaugeMetricFamily("llmlb_node_slots", "Slots the node advertises", labels=["node"])
        inflight = GaugeMetricFamily(
            "llmlb_node_inflight", "Router requests running on the node", labels=["node"]
        )
        abandoned = GaugeMetricFamily(
            "llmlb_node_abandoned",
            "Jobs whose client left that the node may still be running (they hold a slot)",
            labels=["node"],
        )
        completed = CounterMetricFamily(
            "llmlb_node_completed", "Requests the node completed", labels=["node"]
        )
        failures = GaugeMetricFamily(
            "llmlb_node_failures_recent", "Failures kept in the node's log", labels=["node"]
        )
        for node in self._nodes.all():
            status = self._nodes.status(node)
            up.add_metric([node.id, node.name, status], 1.0 if status == "online" else 0.0)
            slots.add_metric([node.id], node.slots)
            inflight.add_metric([node.id], node.inflight)
            abandoned.add_metric([node.id], node.abandoned)
            completed.add_metric([node.id], node.completed)
            failures.add_metric([node.id], len(node.failures))
        yield from (up, slots, inflight, abandoned, completed, failures)


@dataclass(frozen=True, slots=True)
class _RouteSeries:
    requests: Any
    duration: Any


@dataclass(frozen=True, slots=True)
class _ModelSeries:
    requests: Any
    duration: Any
    queue_wait: Any
    images: Any
    generation: Any
    steps: Any
    steps_per_second: Any


class Metrics:
    def __init__(self, nodes: NodeRegistry, balancer: Balancer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "llmlb_requests", "HTTP requests served", ["method", "route", "status"], registry=registry
        )
        self.duration = Histogram(
            "llmlb_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.model_requests = Counter(
            "llmlb_model_requests", "Requests for the model", ["model"], registry=registry
        )
        self.model_errors = Counter(
            "llmlb_model_errors",
            "Requests for the model answered 400 or more",
            ["model", "status"],
            registry=registry,
        )
        self.model_duration = Histogram(
            "llmlb_model_request_duration_seconds",
            "Latency of requests for the model",
            ["model"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.model_queue_wait = Histogram(
            "llmlb_model_queue_wait_seconds",
            "Time requests for the model waited for a free slot",
            ["model"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.model_images = Counter(
            "llmlb_model_images", "Images generated with the model", ["model"], registry=registry
        )
        self.model_generation = Histogram(
            "llmlb_model_generation_seconds",
            "Time the nodes spent generating a request's images (as they report it)",
            ["model"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.model_steps = Counter(
            "llmlb_model_steps", "Sampling steps run for the model's requests", ["model"], registry=registry
        )
        self.model_steps_per_second = Gauge(
            "llmlb_model_steps_per_second",
            "Sampling steps per second of the model's last request that reported them",
            ["model"],
            registry=registry,
        )
        self.upstream = Counter(
            "llmlb_upstream_requests", "Router calls to nodes", ["node", "outcome"], registry=registry
        )
        self.upstream_duration = Histogram(
            "llmlb_upstream_duration_seconds",
            "Node call latency",
            ["node"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.registry.register(_LiveState(nodes, balancer))
        self._nodes = nodes
        self._labelled: dict[str, set[str]] = {}  # node id -> outcomes with a series
        # Children by label values: one dict lookup per request instead of labels()' lock.
        self._routes: dict[tuple[str, str, int], _RouteSeries] = {}
        self._models: dict[str, _ModelSeries] = {}
        nodes.subscribe(self._forget_departed_nodes)

    def observe_request(self, record: RequestRecord) -> None:
        """Count a finished request (the request log's ``observe``)."""
        key = (record.method, record.route if record.matched else UNMATCHED, record.status)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _RouteSeries(
                self.requests.labels(key[0], key[1], str(key[2])), self.duration.labels(key[1])
            )
        route.requests.inc()
        route.duration.observe(record.duration_s)
        if record.model is not None:
            self._observe_model(record.model, record)

    def _observe_model(self, model: str, record: RequestRecord) -> None:
        series = self._models.get(model)
        if series is None:
            series = self._models[model] = _ModelSeries(
                self.model_requests.labels(model),
                self.model_duration.labels(model),
                self.model_queue_wait.labels(model),
                self.model_images.labels(model),
                self.model_generation.labels(model),
                self.model_steps.labels(model),
                self.model_steps_per_second.labels(model),
            )
        series.requests.inc()
        series.duration.observe(record.duration_s)
        series.queue_wait.observe(record.queue_wait_s)
        if record.status >= 400:
            self.model_errors.labels(model, str(record.status)).inc()
        if record.images:
            series.images.inc(record.images)
        if record.generation_s > 0:
            series.generation.observe(record.generation_s)
            if record.steps:
                series.steps.inc(record.steps)
                series.steps_per_second.set(record.steps / record.generation_s)

    def observe_upstream(self, node_id: str, outcome: str, seconds: float) -> None:
        self.upstream.labels(node_id, outcome).inc()
        self.upstream_duration.labels(node_id).observe(seconds)
        self._labelled.setdefault(node_id, set()).add(outcome)

    def _forget_departed_nodes(self) -> None:
        """Drop the series of deregistered nodes, so churning node ids do not pile up."""
        present = {n.id for n in self._nodes.all()}
        for node_id in [n for n in self._labelled if n not in present]:
            for outcome in self._labelled.pop(node_id):
                self.upstream.remove(node_id, outcome)
            self.upstream_duration.remove(node_id)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
