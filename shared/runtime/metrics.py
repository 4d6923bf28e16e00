"""Prometheus metrics of one function instance, exposed on /metrics.

Each app has its own registry (several apps can live in one test process); route labels are
the fixed route names, never raw paths, so a scanner probing random URLs cannot grow them.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Request counts by route and status, latency, errors, task failures, cache lookups, model
    calls, predictions in flight and readiness."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: bool = True) -> None:
        """``model=False``: only the HTTP side (requests, latency, errors, webhooks), for the front door."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lsfn_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "lsfn_request_duration_seconds", "Request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("lsfn_errors", "Error answers by route and error", ["route", "error"], registry=r)
        self.webhooks = Counter("lsfn_webhook_events", "Webhook events by action and outcome", ["action", "outcome"], registry=r)
        self.waiting = Gauge("lsfn_admission_waiting", "Requests waiting for a prediction slot, by gate", ["gate"], registry=r)
        # Children by labels: prometheus_client's labels() locks and validates on every call.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        if model:
            self._model_metrics()

    def _model_metrics(self) -> None:
        r = self.registry
        self.phases = Histogram(
            "lsfn_predict_phase_seconds",
            "Time /predict spends fetching, decoding, predicting and encoding",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tasks = Counter("lsfn_tasks", "Tasks answered by /predict, by outcome", ["outcome"], registry=r)
        self.cache = Counter(
            "lsfn_cache_lookups", "Cache lookups by cache (image, embedding) and result", ["cache", "result"], registry=r
        )
        self.model_calls = Counter(
            "lsfn_model_calls", "Calls into the model's parts (image encoder, mask decoder, ...)", ["call"], registry=r
        )
        self.in_flight = Gauge("lsfn_predictions_in_flight", "Predictions running now", registry=r)
        self.ready = Gauge("lsfn_model_ready", "1 once the model is loaded and warmed up", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def cache_lookup(self, hit: bool, cache: str = "image") -> None:
        self.cache.labels(cache, "hit" if hit else "miss").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
