"""Image embeddings of recently seen images, so a follow-up click costs only the mask decoder.

Entries are keyed by the sha256 of the image's bytes, and each image source's key (its URL and
credentials, see ``ImageSource``) remembers the content hash it was fetched as, for
``url_ttl`` seconds: a click on an image seen that recently skips the fetch, the decode and
the encoder; after that, or under another URL, the image is fetched again and same bytes skip
the decode and the encoder (a file replaced under its URL, or access taken away, is noticed
within ``url_ttl``). Concurrent first clicks on one image encode it once. Nothing depends on
an entry being present: a miss fetches and encodes again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from lsfn.functions.sam2.engine import Embedding, Sam2Engine
from lsfn.shared.cache import SingleFlightLRU
from lsfn.shared.runtime.model import ImageSource
from lsfn.shared.runtime.telemetry import Telemetry

__all__ = ["Embedder", "EmbeddingCache"]

# Source keys remembered per cache entry (an image reached by several URLs needs a few).
_ALIASES_PER_ENTRY = 4


class Embedder(Protocol):
    """What the cache encodes with: SAM 2's engine, or any whose embedding has a ``width``,
    ``height`` and ``nbytes`` (SAM 3's, through a one-image adapter)."""

    def embed(self, pixels: np.ndarray) -> Any: ...


class EmbeddingCache:
    """Embeddings within ``max_entries`` and ``max_bytes`` (on the model's device); each
    encoding is counted as the model call ``counter`` (/metrics)."""

    def __init__(self, engine: Sam2Engine | Embedder, *, max_entries: int, max_bytes: int, url_ttl: float,
                 counter: str = "sam2_image_encoder") -> None:  # fmt: skip
        self.engine = engine
        self.counter = counter
        self._embeddings: SingleFlightLRU[str, Embedding] = SingleFlightLRU(
            max_bytes=max_bytes, max_entries=max_entries, size=lambda e: e.nbytes
        )
        self.url_ttl = url_ttl
        # source key -> (content hash, when it was fetched as that)
        self._aliases: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._alias_limit = max(1, max_entries) * _ALIASES_PER_ENTRY
        self._lock = threading.Lock()

    def embedding(self, source: ImageSource, telemetry: Telemetry, size: tuple[int, int] | None = None) -> Embedding:
        """The embedding of the image ``source`` names. ``size`` (width, height), when the
        caller knows what the annotator sees, rules out a remembered image of another size
        (a file replaced under the same URL)."""
        with self._lock:
            alias = self._aliases.get(source.key)
        content = alias[0] if alias is not None and time.monotonic() - alias[1] < self.url_ttl else None
        if content is not None:
            found = self._embeddings.get(content)
            if found is not None and (size is None or size == (found.width, found.height)):
                telemetry.cache_lookup("embedding", True)
                return found
        data = source.fetch()
        content = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._aliases[source.key] = (content, time.monotonic())
            self._aliases.move_to_end(source.key)
            while len(self._aliases) > self._alias_limit:
                self._aliases.popitem(last=False)

        return self.encoded(content, lambda: source.decode(data).pixels, telemetry)

    def encoded(self, content: str, pixels: Callable[[], np.ndarray], telemetry: Telemetry) -> Embedding:
        """The embedding of the image whose content hash is ``content``; ``pixels()`` gives
        the image when it must be encoded."""

        def encode() -> Embedding:
            image = pixels()
            with telemetry.phase("image-encoder"):
                embedded = self.engine.embed(image)
            telemetry.count(self.counter)
            return embedded

        embedded, hit = self._embeddings.get_or_load(content, encode)
        telemetry.cache_lookup("embedding", hit)
        return embedded
