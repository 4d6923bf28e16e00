"""The image fetcher's bytes cache: one download per image for the requests that want it at once.

Keyed by what was fetched and a digest of the credentials it was fetched with, so bytes
fetched with one project's credentials are never served without them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

from lsfn.shared.cache import SingleFlightLRU
from lsfn.shared.fetch_error import FetchError
from lsfn.shared.ssrf import display_url

__all__ = ["FetchCache"]

CacheKey = tuple[str, str | None]  # (the cache key of a FetchTarget, its credentials digest)


class FetchCache:
    """Fetched bytes up to ``max_bytes``; ``on_cache(hit)`` is told of every lookup it serves."""

    def __init__(self, max_bytes: int, wait: float, on_cache: Callable[[bool], None] | None = None) -> None:
        self._lru: SingleFlightLRU[CacheKey, bytes] = SingleFlightLRU(max_bytes=max_bytes, size=len)
        self._wait = wait
        self._on_cache = on_cache

    def get_or_load(self, key: CacheKey, load: Callable[[], bytes]) -> bytes:
        """The bytes cached under ``key``, else ``load()``'s (loaded once for concurrent callers)."""
        try:
            data, hit = self._lru.get_or_load(key, load, wait=self._wait)
        except FutureTimeout:  # waited on another request's fetch of the same image
            raise FetchError(504, f"timed out waiting for {display_url(key[0])}") from None
        if self._on_cache is not None and self._lru.enabled:
            self._on_cache(hit)
        return data
