"""Work handed to one background thread through a queue bounded by items and by bytes.

Webhooks must be answered at once (Label Studio waits one second, inside the annotator's save),
so the handler queues the event and a worker thread does the rest in arrival order. A flood is
refused (``submit`` returns False, the route answers 503), never buffered without bound.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from lsfn.shared.runtime.logs import logger

__all__ = ["BoundedWorker"]

T = TypeVar("T")


class BoundedWorker(Generic[T]):
    def __init__(self, handle: Callable[[T], None], name: str, size: int = 64, max_bytes: int = 64 << 20) -> None:
        self._handle = handle
        self._name = name
        self._size = size
        self._max_bytes = max_bytes
        self._reset()
        # A server that forks after creating this (gunicorn) gets a fresh queue in the child:
        # threads do not survive a fork.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._queue: queue.Queue[tuple[T, int]] = queue.Queue(self._size)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._bytes = 0

    def submit(self, item: T, size: int = 0) -> bool:
        """Queue ``item`` (``size``: the bytes it holds); False when the queue is full."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._worker.start()
            if self._bytes and self._bytes + size > self._max_bytes:
                return False
            try:
                self._queue.put_nowait((item, size))
            except queue.Full:
                return False
            self._bytes += size
        return True

    def join(self) -> None:
        """Wait until every queued item has been handled (for tests and shutdown)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            item, size = self._queue.get()
            try:
                self._handle(item)
            except Exception:  # noqa: BLE001 - one bad item must not stop the worker
                logger.exception("background work failed", extra={"worker": self._name})
            finally:
                with self._lock:
                    self._bytes -= size
                self._queue.task_done()
