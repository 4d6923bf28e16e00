"""The image fetcher's requests: redirects one hop at a time, one retry, deadlines, size limits.

Each redirect hop is checked again (``FetchTargets.check_hop``), and an Authorization header
never follows a redirect to another origin (a presigned S3 URL must not receive Label Studio's
token). urllib3's and the socket's errors come out as FetchError, without the URL's secrets.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from urllib3 import Timeout
from urllib3.exceptions import HTTPError, LocationValueError, NameResolutionError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse

from lsfn.shared.fetch_connections import Deadline, deadline, pinned_pool
from lsfn.shared.fetch_error import FetchError
from lsfn.shared.fetch_targets import FetchTarget, FetchTargets, origin
from lsfn.shared.label_studio_auth import LabelStudioAuth, Post
from lsfn.shared.settings import Settings
from lsfn.shared.ssrf import display_url

__all__ = ["MAX_REDIRECTS", "USER_AGENT", "FetchTransport"]

MAX_REDIRECTS = 5
USER_AGENT = "lsfn"

_CHUNK = 64 * 1024
_DRAIN_BYTES = 64 * 1024  # a longer unread body costs less to drop with its connection
_TOKEN_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NameResolutionError):
        return "the host name does not resolve"
    cause = exc.__cause__ or exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc)[:200] or type(exc).__name__


def _discard(response: BaseHTTPResponse) -> None:
    """Give the connection back: drain a short unread body, drop the connection otherwise."""
    if response.connection is None:  # read to the end: already back in the pool
        return
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) <= _DRAIN_BYTES:
        response.drain_conn()
    else:
        response.close()
        response.release_conn()


class FetchTransport:
    """GETs a target's bytes (and POSTs Label Studio's token exchange) over the pinned pool."""

    def __init__(self, settings: Settings, targets: FetchTargets, auth: LabelStudioAuth, pool_size: int) -> None:
        self._settings = settings
        self._targets = targets
        self._auth = auth
        self._http = pinned_pool(targets.policy, pool_size)

    def load(self, target: FetchTarget, sink: BinaryIO | None = None, limit: int | None = None,
             timeout: float | None = None) -> Any:
        """The target's bytes, or written to ``sink`` (then their size), at most ``limit`` bytes
        (MAX_IMAGE_BYTES) within ``timeout`` seconds (FETCH_TIMEOUT) for every hop together."""
        with deadline(timeout or self._settings.fetch_timeout) as current:
            return self._download(target, current, sink, limit or self._settings.max_image_bytes)

    def close(self) -> None:
        self._http.clear()

    def _download(self, target: FetchTarget, current: Deadline, sink: BinaryIO | None, limit: int) -> Any:
        url, via_ls = target.url, target.via_ls
        first = origin(urlsplit(url))
        same_origin, retried, hops = True, False, 0
        while True:
            parts = self._targets.check_hop(url)
            # Credentials go to the first origin only; once a redirect leaves it they stay off.
            same_origin = same_origin and origin(parts) == first
            auth = (self._ls_header(current) if via_ls else target.basic) if same_origin else None
            # Ask for the bytes as stored: a compressed image gains nothing, a gzip bomb costs.
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if auth:
                headers["Authorization"] = auth
            with self._errors(url, current):
                response = self._request("GET", url, headers, current)
                try:
                    status = response.status
                    if status in _REDIRECT_STATUSES:
                        location = response.headers.get("Location", "").strip()
                        if not location:
                            raise FetchError(502, f"{display_url(url)} answered {status} without a Location")
                        hops += 1
                        if hops > MAX_REDIRECTS:
                            raise FetchError(502, f"more than {MAX_REDIRECTS} redirects fetching {display_url(url)}")
                        url = urljoin(url, location)
                        continue
                    if status == 401 and via_ls and same_origin and not retried and self._auth.refused(auth):
                        retried = True
                        continue
                    if not 200 <= status < 300:
                        raise self._status_error(status, url, via_ls and same_origin)
                    return self._read_body(response, url, current, limit, sink)
                finally:
                    _discard(response)

    def _ls_header(self, current: Deadline) -> str | None:
        """Label Studio's Authorization header, its token exchanged within this fetch's deadline."""
        return self._auth.header(self._exchange_post(current), wait=current.remaining())

    def _exchange_post(self, current: Deadline) -> Post:
        def post(path: str, body: bytes) -> bytes:
            """POST the token exchange to Label Studio (no Authorization header)."""
            url = self._targets.label_studio("exchanging LABEL_STUDIO_API_KEY") + path
            headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
            with self._errors(url, current):
                response = self._request("POST", url, headers, current, body)
                try:
                    if response.status != 200:
                        raise FetchError(502, f"Label Studio answered {response.status} for {urlsplit(url).path}: "
                                              "check LABEL_STUDIO_API_KEY (a personal access token)")
                    return self._read_body(response, url, current, _TOKEN_BYTES)
                finally:
                    _discard(response)

        return post

    def _request(self, method: str, url: str, headers: dict[str, str], current: Deadline,
                 body: bytes | None = None) -> BaseHTTPResponse:
        for attempt in (1, 2):
            remaining = current.remaining()
            if remaining <= 0:
                raise self._timeout(url)
            try:
                return self._http.urlopen(method, url, body=body, headers=headers, redirect=False, retries=False,
                                          preload_content=False, timeout=Timeout(remaining))
            except ProtocolError as exc:
                # A pooled connection the server closed as the request went out: once more, on a new one.
                dropped = bool(exc.args) and isinstance(exc.args[-1], ConnectionError)
                if attempt == 2 or current.fired or not dropped:
                    raise
        raise AssertionError("unreachable")

    def _read_body(self, response: BaseHTTPResponse, url: str, current: Deadline, limit: int,
                   sink: BinaryIO | None = None) -> Any:
        """The body as bytes, or written to ``sink`` (then its size)."""
        length = response.headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > limit:
            raise FetchError(413, f"{display_url(url)} is {int(length)} bytes, more than the limit ({limit})")
        body = bytearray()
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise FetchError(413, f"{display_url(url)} is larger than the limit ({limit} bytes)")
            if sink is None:
                body += chunk
            else:
                sink.write(chunk)
            if current.remaining() <= 0:
                raise self._timeout(url)
        if current.fired:  # a socket shut down by the deadline reads as the end of the body
            raise self._timeout(url)
        return bytes(body) if sink is None else size

    def _status_error(self, status: int, url: str, from_ls: bool) -> FetchError:
        if from_ls and status in (401, 403):
            hint = ("check LABEL_STUDIO_API_KEY" if self._auth.key else
                    "set LABEL_STUDIO_API_KEY (Label Studio serves task files to authenticated callers only)")
            return FetchError(502, f"Label Studio answered {status} for {urlsplit(url).path}: {hint}")
        return FetchError(502, f"{display_url(url)} answered HTTP {status}")

    def _timeout(self, url: str) -> FetchError:
        return FetchError(504, f"fetching {display_url(url)} took longer than FETCH_TIMEOUT "
                               f"({self._settings.fetch_timeout:g} s)")

    @contextmanager
    def _errors(self, url: str, current: Deadline) -> Iterator[None]:
        """urllib3's and the socket's errors as FetchError, without the URL's secrets."""
        try:
            yield
        except LocationValueError:
            raise FetchError(422, f"cannot fetch {display_url(url)}: malformed URL") from None
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            timed_out = isinstance(exc, Urllib3Timeout) and not isinstance(exc, NewConnectionError)
            if timed_out or current.remaining() <= 0:
                raise self._timeout(url) from None
            raise FetchError(502, f"cannot fetch {display_url(url)}: {_reason(exc)}") from None
