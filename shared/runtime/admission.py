"""Admission to a bounded number of slots, with a short bounded queue in front.

An annotator's click takes a tenth of a second: refusing it because two others are running
shows the annotator an error for nothing, so a request waits for a slot up to ADMIT_TIMEOUT.
A queue that grows without bound only turns into timeouts, so at most ADMIT_QUEUE requests
wait; beyond that the answer is 503 at once, with ``Retry-After``. A semaphore with a waiter
count is all this needs (no library offers a bounded-wait admission gate smaller than this).
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Gauge

from lsfn.shared.runtime.errors import HTTPError

__all__ = ["Gate"]


class Gate:
    def __init__(self, slots: int, queue: int, what: str, waiting: Gauge | None = None) -> None:
        self.slots = slots
        self.queue = queue
        self.what = what  # names the slots in the 503's detail
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._waiting = 0
        self._gauge = waiting  # the number waiting, for /metrics

    def enter(self, until: float) -> None:
        """Take a slot, waiting until ``until`` (time.monotonic()) at most; raise 503 when the
        queue is full or no slot came free in time."""
        if self._free.acquire(blocking=False):
            return
        with self._lock:
            if self._waiting >= self.queue:
                raise self._refused(f"{self._waiting} requests are already waiting")
            self._waiting += 1
        if self._gauge is not None:
            self._gauge.inc()
        try:
            if self._free.acquire(timeout=max(0.0, until - time.monotonic())):
                return
        finally:
            with self._lock:
                self._waiting -= 1
            if self._gauge is not None:
                self._gauge.dec()
        raise self._refused("none came free in time (ADMIT_TIMEOUT)")

    def leave(self) -> None:
        self._free.release()

    @property
    def waiting(self) -> int:
        return self._waiting

    def _refused(self, why: str) -> HTTPError:
        return HTTPError(503, "overloaded", f"all {self.slots} slots for {self.what} are taken and {why}", {"Retry-After": "1"})
