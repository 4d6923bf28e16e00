"""What one request reports about itself: phase times for the ``Server-Timing`` header, and
cache lookups and model calls for /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from lsfn.shared.runtime.metrics import Metrics

__all__ = ["Telemetry", "Timing"]


class Timing:
    """Phase durations of one request, for the ``Server-Timing`` header and the metrics."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started

    def add(self, other: "Timing") -> None:
        """Add another Timing's phases (one kept by a worker thread, so this one is only ever
        changed by the request's own thread)."""
        for name, seconds in other.phases.items():
            self.phases[name] = self.phases.get(name, 0.0) + seconds

    def header(self, total: float) -> str:
        if not self.phases:
            return ""
        parts = [f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.phases.items()]
        return ", ".join([*parts, f"total;dur={total * 1000:.1f}"])


class Telemetry:
    """Handed to the model with each batch: ``phase("image-encoder")`` times a step of its own
    (it shows in ``Server-Timing`` beside fetch, decode and predict), ``cache_lookup`` and
    ``count`` feed /metrics."""

    def __init__(self, timing: Timing, metrics: Metrics) -> None:
        self._timing = timing
        self._metrics = metrics

    def phase(self, name: str) -> AbstractContextManager[None]:
        return self._timing.phase(name)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self._metrics.cache_lookup(hit, cache)

    def count(self, call: str, n: int = 1) -> None:
        self._metrics.model_calls.labels(call).inc(n)
