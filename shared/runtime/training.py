"""Webhook events handed to ``Model.fit`` in the background.

Label Studio waits at most one second for a webhook, inside the annotator's save when it runs
without Redis, so /webhook only queues the event; one worker thread feeds ``fit`` in arrival
order once the model is loaded. The queue is bounded by events and by their body bytes: a
flood is refused, not buffered.
"""

from __future__ import annotations

import os
import queue
import threading

from shared.protocol import WebhookEvent
from shared.runtime.lifecycle import Loader, State
from shared.runtime.logs import logger
from shared.runtime.metrics import Metrics
from shared.runtime.model import Model

__all__ = ["FitQueue"]


class FitQueue:
    def __init__(
        self, model: Model, loader: Loader, metrics: Metrics, size: int = 64, max_bytes: int = 64 << 20
    ) -> None:
        self.model = model
        self.loader = loader
        self.metrics = metrics
        self._size = size
        self._max_bytes = max_bytes
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._queue: queue.Queue[tuple[WebhookEvent, str, int]] = queue.Queue(self._size)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._bytes = 0

    def submit(self, event: WebhookEvent, job: str, size: int = 0) -> bool:
        """Queue an event (``size``: its body's bytes) for fit(); False when the queue is full."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="lsfn-fit", daemon=True)
                self._worker.start()
            if self._bytes and self._bytes + size > self._max_bytes:
                return False
            try:
                self._queue.put_nowait((event, job, size))
            except queue.Full:
                return False
            self._bytes += size
        return True

    def join(self) -> None:
        """Wait until every queued event has been handled (for tests and shutdown)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            event, job, size = self._queue.get()
            try:
                while self.loader.wait(60.0) is State.LOADING:
                    pass
                if self.loader.state is State.READY:
                    self.model.fit(event)
                    logger.info("fit done", extra={"job": job, "action": event.action})
                else:
                    logger.error("fit skipped: the model failed to load", extra={"job": job, "action": event.action})
            except Exception:  # noqa: BLE001 - one bad event must not stop the worker
                logger.exception("fit failed", extra={"job": job, "action": event.action})
            finally:
                with self._lock:
                    self._bytes -= size
                self._queue.task_done()
