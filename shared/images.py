"""Task image bytes from Label Studio paths, cloud storage URIs, web URLs and data: URLs.

Task data is written by any Label Studio user, so every URL fetched here is a potential SSRF.
``ImageFetcher`` puts together the parts that keep it safe and fast, one job each:

- ``fetch_targets``: a task's value to the URL fetched and its credentials, under the policy
- ``label_studio_auth``: Label Studio's API key as a header (a personal token exchanged, renewed)
- ``fetch_transport``: redirects hop by hop, one retry, the deadline and the size limit
- ``fetch_connections``: the pool whose sockets connect only to addresses the policy checked
- ``fetch_cache``: the bytes cache, one download for concurrent requests of the same image
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from lsfn.shared.fetch_cache import FetchCache
from lsfn.shared.fetch_error import FetchError
from lsfn.shared.fetch_targets import CLOUD_SCHEMES, FetchTargets, decode_data_url, parse_value, resolving
from lsfn.shared.fetch_transport import FetchTransport
from lsfn.shared.label_studio_auth import LabelStudioAuth
from lsfn.shared.settings import Settings

__all__ = ["CLOUD_SCHEMES", "FetchError", "ImageFetcher"]

WORKERS = 8


class ImageFetcher:
    """Fetches task images under the SSRF policy, with pooled connections and an LRU cache."""

    def __init__(self, settings: Settings, *, on_cache: Callable[[bool], None] | None = None) -> None:
        self._settings = settings
        self._targets = FetchTargets(settings.label_studio_url, settings.fetch_allowed_hosts)
        key = settings.label_studio_api_key.get_secret_value().strip() if settings.label_studio_api_key else None
        auth = LabelStudioAuth(key, FetchError)
        self._transport = FetchTransport(settings, self._targets, auth, pool_size=2 * WORKERS)
        self._cache = FetchCache(settings.image_cache_bytes, wait=settings.fetch_timeout + 1.0, on_cache=on_cache)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def fetch(self, value: str, *, task_id: int | None = None,
              credentials: tuple[str, str] | None = None, cached: bool = True) -> bytes:
        """The bytes ``value`` (a task's image field) points to; raises FetchError or ForbiddenURL.
        ``cached=False`` fetches afresh and keeps nothing (for a caller that keeps what it
        derives from the bytes and fetches again only to check them)."""
        value, scheme = parse_value(value)
        if scheme == "data":
            return decode_data_url(value, self._settings.max_image_bytes)
        target = self._targets.target(value, scheme, task_id, credentials)
        with resolving(value, scheme):
            if not cached:
                return self._transport.load(target)
            return self._cache.get_or_load((target.key, target.digest), lambda: self._transport.load(target))

    def identity(self, value: str, *, task_id: int | None = None, credentials: tuple[str, str] | None = None) -> str:
        """A name for what ``fetch`` would return, without fetching: the URL fetched (a cloud
        URI as written) and a digest of the credentials it is fetched with; a data: URL by
        the hash of its text. Refuses what ``fetch`` refuses before connecting."""
        value, scheme = parse_value(value)
        if scheme == "data":
            return "data:sha256:" + hashlib.sha256(value.encode()).hexdigest()
        target = self._targets.target(value, scheme, task_id, credentials)
        return repr((target.key, target.digest))

    def fetch_to(self, value: str, sink: BinaryIO, *, limit: int, timeout: float, task_id: int | None = None,
                 credentials: tuple[str, str] | None = None) -> int:
        """Stream what ``value`` points to into ``sink`` (a video, never held in memory whole),
        at most ``limit`` bytes within ``timeout`` seconds; the bytes written. Not cached."""
        value, scheme = parse_value(value)
        if scheme == "data":
            data = decode_data_url(value, limit)
            sink.write(data)
            return len(data)
        target = self._targets.target(value, scheme, task_id, credentials)
        with resolving(value, scheme):
            return self._transport.load(target, sink=sink, limit=limit, timeout=timeout)

    def fetch_many(self, items: Sequence[tuple[str, int | None, tuple[str, str] | None]]) -> list[bytes | Exception]:
        """``fetch`` for each (value, task_id, credentials), concurrently, in input order; a
        failed item's exception is returned in its place."""
        if len(items) <= 1:
            return [self._try_fetch(*item) for item in items]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="lsfn-fetch")
            executor = self._executor
        return [future.result() for future in [executor.submit(self._try_fetch, *item) for item in items]]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._transport.close()

    def _try_fetch(self, value: str, task_id: int | None, credentials: tuple[str, str] | None) -> bytes | Exception:
        try:
            return self.fetch(value, task_id=task_id, credentials=credentials)
        except Exception as exc:  # noqa: BLE001 - returned to the caller in the item's place
            return exc
