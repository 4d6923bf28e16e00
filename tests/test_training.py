"""shared.runtime.training: webhook events reach fit() in the background, within bounds."""

from __future__ import annotations

import threading

from lsfn.shared.protocol import WebhookEvent
from lsfn.shared.runtime.lifecycle import Loader, State
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Model
from lsfn.shared.runtime.training import FitQueue
from lsfn.shared.settings import Settings


class Blocking(Model):
    trains = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.release = threading.Event()
        self.seen: list[str] = []

    def fit(self, event: WebhookEvent) -> None:
        self.release.wait(10)
        if event.action == "BOOM":
            raise RuntimeError("a bad event")
        self.seen.append(event.action)


def ready_queue(size: int, max_bytes: int) -> tuple[Blocking, FitQueue]:
    model = Blocking(Settings.model_validate({}))
    loader = Loader(lambda: None)
    loader.start()
    assert loader.wait(5) is State.READY
    return model, FitQueue(model, loader, Metrics(), size=size, max_bytes=max_bytes)


def event(action: str) -> WebhookEvent:
    return WebhookEvent.model_validate({"action": action, "project": {"id": 1}})


def test_a_full_queue_refuses_instead_of_buffering() -> None:
    model, fits = ready_queue(size=3, max_bytes=1 << 20)
    accepted = [fits.submit(event(f"E{i}"), f"job{i}", 10) for i in range(6)]
    # One event is being handled (blocked in fit), three wait: the rest are refused.
    assert accepted.count(True) in (3, 4) and accepted[-1] is False
    model.release.set()
    fits.join()
    assert model.seen == [f"E{i}" for i, ok in enumerate(accepted) if ok]


def test_the_queue_is_bounded_by_body_bytes_and_survives_a_failing_fit() -> None:
    model, fits = ready_queue(size=100, max_bytes=1000)
    assert fits.submit(event("BOOM"), "a", 600)
    assert not fits.submit(event("big"), "b", 600)  # 1200 bytes would be queued
    assert fits.submit(event("small"), "c", 300)
    model.release.set()
    fits.join()
    assert model.seen == ["small"]  # the failing event did not stop the worker
    assert fits.submit(event("again"), "d", 900)  # the bytes were given back
    fits.join()
    assert model.seen == ["small", "again"]
