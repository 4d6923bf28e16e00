"""Webhook events handed to ``Model.fit`` in the background.

Label Studio waits at most one second for a webhook, inside the annotator's save when it runs
without Redis, so /webhook only queues the event; one worker thread feeds ``fit`` in arrival
order once the model is loaded. The queue is bounded by events and by their body bytes: a
flood is refused, not buffered.
"""

from __future__ import annotations

from lsfn.shared.protocol import WebhookEvent
from lsfn.shared.runtime.background import BoundedWorker
from lsfn.shared.runtime.lifecycle import Loader, State
from lsfn.shared.runtime.logs import logger
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Model

__all__ = ["FitQueue"]


class FitQueue:
    def __init__(
        self, model: Model, loader: Loader, metrics: Metrics, size: int = 64, max_bytes: int = 64 << 20
    ) -> None:
        self.model = model
        self.loader = loader
        self.metrics = metrics
        self._worker: BoundedWorker[tuple[WebhookEvent, str]] = BoundedWorker(self._fit, "lsfn-fit", size, max_bytes)

    def submit(self, event: WebhookEvent, job: str, size: int = 0) -> bool:
        """Queue an event (``size``: its body's bytes) for fit(); False when the queue is full."""
        return self._worker.submit((event, job), size)

    def join(self) -> None:
        """Wait until every queued event has been handled (for tests and shutdown)."""
        self._worker.join()

    def _fit(self, item: tuple[WebhookEvent, str]) -> None:
        event, job = item
        try:
            while self.loader.wait(60.0) is State.LOADING:
                pass
            if self.loader.state is State.READY:
                self.model.fit(event)
                logger.info("fit done", extra={"job": job, "action": event.action})
            else:
                logger.error("fit skipped: the model failed to load", extra={"job": job, "action": event.action})
        except Exception:  # noqa: BLE001 - logged with the job it belongs to
            logger.exception("fit failed", extra={"job": job, "action": event.action})
