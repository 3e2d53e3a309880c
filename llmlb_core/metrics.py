"""Prometheus metrics for the router (``GET /metrics``), one registry per app.

- ``llmlb_requests_total{method,route,status}`` and ``llmlb_request_duration_seconds{route}``:
  every routed HTTP request (route = the handler's path template, so ids do not explode label
  cardinality).
- ``llmlb_upstream_requests_total{node,outcome}`` and ``llmlb_upstream_duration_seconds{node}``:
  calls from the router to nodes and endpoints (outcome: ok, client_error, failed).
- Read at scrape time from live state: ``llmlb_queue_depth``, ``llmlb_queued_total``,
  ``llmlb_node_up{node,name,status}``, ``llmlb_node_slots``, ``llmlb_node_inflight``,
  ``llmlb_node_abandoned`` (jobs whose client left, counted until the node reports them ended),
  ``llmlb_node_completed_total``, ``llmlb_node_failures_recent``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from llmlb_core.balancer import Balancer
    from llmlb_core.nodes import NodeRegistry

# Image generations take seconds to minutes: buckets reach 15 minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


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


class Metrics:
    def __init__(self, nodes: NodeRegistry, balancer: Balancer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "llmlb_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "llmlb_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.upstream = Counter(
            "llmlb_upstream_requests", "Router calls to nodes", ["node", "outcome"], registry=self.registry
        )
        self.upstream_duration = Histogram(
            "llmlb_upstream_duration_seconds",
            "Node call latency",
            ["node"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveState(nodes, balancer))
        self._nodes = nodes
        self._labelled: dict[str, set[str]] = {}  # node id -> outcomes with a series
        nodes.subscribe(self._forget_departed_nodes)

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

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting every routed request by its handler's path template."""

        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                handler = scope.get("route_handler")
                route = next(iter(handler.paths), "?") if handler is not None else "?"
                self.requests.labels(scope.get("method", "?"), route, str(status)).inc()
                self.duration.labels(route).observe(time.perf_counter() - started)

        return record
