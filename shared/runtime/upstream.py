"""How the front door reaches the GPU function: one small interface, two kinds of call.

``Upstream.call`` sends one request and returns the answer, or raises ``Unreachable`` when no
answer came (refused, reset, timed out). ``HttpUpstream`` calls a URL over HTTP with a bearer
token from a callable (a Cloud Run ID token for a private service; none locally);
``CallUpstream`` calls it as a function (Modal's ``.remote()`` on the GPU class: no HTTP hop, no
token, the platform authenticates the call). Retrying a cold upstream is the front
door's business, not the transport's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import urllib3
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from werkzeug.datastructures import Headers

__all__ = ["Answer", "CallUpstream", "Handler", "HttpUpstream", "TokenProvider", "Unreachable", "Upstream"]

# A bearer token for the upstream (called before each request; it caches and refreshes itself),
# or None to send no Authorization.
TokenProvider = Callable[[], str | None]
# The GPU function called as a function: (method, path, body, headers, timeout) -> (status,
# body, headers), raising Unreachable when no answer came within ``timeout`` seconds.
Handler = Callable[[str, str, bytes | None, dict[str, str], float], tuple[int, bytes, Mapping[str, str]]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Unreachable(Exception):
    """No answer from the upstream. ``timed_out``: it may still be working on the request
    (retrying would run it twice); otherwise the connection failed (refused, reset, a pooled
    connection the other side had closed) and a retry is safe: predictions have no side effects."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Upstream(Protocol):
    def call(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float) -> Answer:
        """Send one request to the GPU function; ``timeout`` bounds the whole call."""
        ...


class HttpUpstream:
    """The GPU function at ``url`` (a path prefix is kept, as Label Studio keeps one)."""

    def __init__(self, url: str, token: TokenProvider | None = None, connections: int = 16) -> None:
        self.url = url.rstrip("/")
        self._token = token
        # Our own pool: the upstream is configured, never taken from a request, so the task-URL
        # SSRF guard (shared.images) does not apply to it.
        self._http = urllib3.PoolManager(maxsize=connections, block=False, retries=False)

    def call(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float) -> Answer:
        sent = dict(headers)
        try:
            token = self._token() if self._token is not None else None
        except Exception as exc:  # noqa: BLE001 - a metadata server hiccup: retried like a refused connection
            raise Unreachable(f"no credentials for the upstream ({type(exc).__name__})", timed_out=False) from None
        if token:
            sent["Authorization"] = f"Bearer {token}"
        timeout = max(timeout, 0.05)
        # The messages name no address: they end up in answers (error items, 503 details).
        try:
            response = self._http.request(
                method, self.url + path, body=body, headers=sent,
                timeout=urllib3.Timeout(total=timeout, connect=min(timeout, 5.0)), preload_content=True,
            )  # fmt: skip
        except ConnectTimeoutError as exc:  # NewConnectionError too: refused, unresolvable
            raise Unreachable(f"could not connect to the upstream ({type(exc).__name__})", timed_out=False) from None
        except Urllib3Timeout:
            raise Unreachable(f"no answer from the upstream within {timeout:.1f} s", timed_out=True) from None
        except Urllib3Error as exc:  # ProtocolError: reset, or a stale pooled connection
            raise Unreachable(f"the connection to the upstream failed ({type(exc).__name__})", timed_out=False) from None
        return Answer(response.status, response.data, response.headers)  # case-insensitive


class CallUpstream:
    """The GPU function reached through ``handler`` (Modal's ``.remote()``, or ``.local()``)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def call(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float) -> Answer:
        status, data, answered = self._handler(method, path, body, dict(headers), max(timeout, 0.05))
        return Answer(status, data, Headers(list(answered.items())))  # case-insensitive, as urllib3's
