"""shared.cache.SingleFlightLRU: budgets by bytes and entries, one load per key at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from lsfn.shared.cache import SingleFlightLRU


def lru(max_bytes: int = 100, max_entries: int | None = None) -> SingleFlightLRU[str, bytes]:
    return SingleFlightLRU(max_bytes=max_bytes, max_entries=max_entries, size=len)


def test_hits_after_the_first_load_and_least_recent_goes_first() -> None:
    cache = lru(max_bytes=30)
    loads: list[str] = []

    def load(key: str) -> bytes:
        loads.append(key)
        return key.encode() * 10

    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get_or_load(key, lambda key=key: load(key))
    # a, b and c fill the 30 bytes exactly; the repeated keys were hits.
    assert loads == ["a", "b", "c"] and cache.bytes == 30
    cache.get_or_load("d", lambda: load("d"))  # 40 > 30: the least recently used (c) goes
    assert cache.get("c") is None and cache.get("a") and cache.get("b") and len(cache) == 3


def test_entry_budget_and_oversized_values() -> None:
    cache = lru(max_bytes=1000, max_entries=2)
    for key in "abc":
        cache.get_or_load(key, lambda: b"x")
    assert cache.get("a") is None and len(cache) == 2
    value, hit = cache.get_or_load("big", lambda: b"y" * 2000)
    assert value == b"y" * 2000 and not hit and cache.get("big") is None  # returned, not kept


def test_a_zero_budget_keeps_nothing() -> None:
    for cache in (lru(max_bytes=0), lru(max_entries=0)):
        assert not cache.enabled
        assert cache.get_or_load("a", lambda: b"1") == (b"1", False)
        assert cache.get_or_load("a", lambda: b"2") == (b"2", False)


def test_concurrent_misses_load_once_and_share_the_value() -> None:
    cache = lru()
    calls = 0
    started = threading.Event()

    def slow() -> bytes:
        nonlocal calls
        calls += 1
        started.set()
        time.sleep(0.3)
        return b"v"

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(cache.get_or_load, "k", slow)
        started.wait(2)
        others = [pool.submit(cache.get_or_load, "k", slow) for _ in range(3)]
        assert first.result() == (b"v", False)
        assert [f.result() for f in others] == [(b"v", True)] * 3
    assert calls == 1


def test_a_failed_load_reaches_every_waiter_and_is_not_kept() -> None:
    cache = lru()
    started = threading.Event()

    def failing() -> bytes:
        started.set()
        time.sleep(0.2)
        raise ValueError("broken image")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get_or_load, "k", failing)
        started.wait(2)
        second = pool.submit(cache.get_or_load, "k", failing)
        for future in (first, second):
            with pytest.raises(ValueError, match="broken image"):
                future.result()
    assert cache.get_or_load("k", lambda: b"ok") == (b"ok", False)


def test_a_waiter_gives_up_after_its_wait() -> None:
    cache = lru()
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(cache.get_or_load, "k", lambda: release.wait(5) and b"late")
        time.sleep(0.1)
        with pytest.raises(FutureTimeout):
            cache.get_or_load("k", lambda: b"never", wait=0.1)
        release.set()
        assert leader.result() == (b"late", False)
