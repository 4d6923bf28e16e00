"""A bounded least-recently-used cache whose concurrent loads of one key run once.

Image bytes and SAM image embeddings are both expensive to make and worth keeping for the next
request, and both are asked for by concurrent requests at once (an annotator's two quick
clicks): the first caller loads, the others wait for its value. No library in the dependency
set does single-flight loading under a byte budget (functools.lru_cache counts entries only
and runs concurrent misses twice), hence this small class.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["SingleFlightLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightLRU(Generic[K, V]):
    """Values by key within ``max_bytes`` (as measured by ``size``) and ``max_entries``; the
    least recently used go first. A value larger than the whole budget is returned, not kept.
    A budget of 0 keeps nothing (every lookup loads)."""

    def __init__(self, *, max_bytes: int, size: Callable[[V], int], max_entries: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._size_of = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[K, Future[V]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and (self.max_entries is None or self.max_entries > 0)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._get(key)

    def get_or_load(self, key: K, load: Callable[[], V], wait: float | None = None) -> tuple[V, bool]:
        """(value, whether it came from the cache or a concurrent load). The first caller of a
        missing key runs ``load``; callers arriving meanwhile wait up to ``wait`` seconds for
        it (concurrent.futures.TimeoutError beyond) and share its value or its exception."""
        if not self.enabled:
            return load(), False
        with self._lock:
            value = self._get(key)
            if value is not None:
                return value, True
            pending = self._inflight.get(key)
            leader = pending is None
            if leader:
                pending = self._inflight[key] = Future()
        assert pending is not None
        if not leader:
            return pending.result(timeout=wait), True
        try:
            value = load()
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            try:
                self._put(key, value)
            finally:  # waiters must never wait on a key nobody loads
                del self._inflight[key]
        pending.set_result(value)
        return value, False

    def _get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def _put(self, key: K, value: V) -> None:
        size = self._size_of(value)
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes or (self.max_entries is not None and len(self._items) > self.max_entries):
            self._bytes -= self._items.popitem(last=False)[1][1]
