"""Task image bytes from Label Studio paths, cloud storage URIs, web URLs and data: URLs.

Task data is written by any Label Studio user, so every URL fetched here is a potential SSRF.
Each connection resolves its host itself, checks every address with ``AddressPolicy`` and
connects the socket to an address it checked: there is no gap for DNS rebinding. Redirects are
followed one hop at a time, each hop checked again, and an Authorization header never follows
a redirect to another origin (a presigned S3 URL must not receive Label Studio's token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import SplitResult, unquote, unquote_to_bytes, urlencode, urljoin, urlsplit

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, LocationValueError, NameResolutionError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse
from urllib3.util import parse_url
from urllib3.util.ssl_ import create_urllib3_context

from lsfn.shared.cache import SingleFlightLRU
from lsfn.shared.settings import Settings
from lsfn.shared.ssrf import AddressPolicy, ForbiddenURL, display_url

__all__ = ["CLOUD_SCHEMES", "FetchError", "ImageFetcher"]

# The URI schemes of Label Studio's import storages (io_storages url_scheme).
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})
MAX_REDIRECTS = 5
WORKERS = 8
USER_AGENT = "lsfn"

_CHUNK = 64 * 1024
_DRAIN_BYTES = 64 * 1024  # a longer unread body costs less to drop with its connection
_TOKEN_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ACCESS_LIFETIME = 300.0  # Label Studio's access tokens live 300 s
_RENEW_MARGIN = 30.0


class FetchError(Exception):
    """A task URL that could not be fetched; ``status`` is what the runtime answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- connections: the address checked is the address connected to -----------------------------

_current = threading.local()  # the _Deadline of the fetch running on this thread
_watch_lock = threading.Lock()


class _Deadline:
    """One fetch's overall time limit.

    Socket timeouts bound each wait, not their sum, so a server sending a byte a second never
    trips them; when the time is up a timer shuts the socket in use down, which ends any read."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._at = time.monotonic() + seconds
        self._conn: Any = None
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def watch(self, conn: Any) -> None:
        with _watch_lock:
            self._conn, self._sock = conn, conn.sock
            conn.deadline = self
        if self.fired:  # the time ran out between two requests (a redirect hop)
            self._fire()
        elif self._timer is None:
            self._timer = threading.Timer(max(self.remaining(), 0.0), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with _watch_lock:
            self.fired = True
            # A connection back in the pool may already serve another fetch: leave it alone.
            if self._conn is None or self._conn.deadline is not self or self._sock is None:
                return
            try:
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _connect(family: int, address: tuple[Any, ...], timeout: float | None,
             options: Sequence[tuple[int, int, int]] | None = None) -> socket.socket:
    """Connect a TCP socket to an address the policy has checked (every connection comes here)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for option in options or ():
            sock.setsockopt(*option)
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedConnection:
    """urllib3 connection mixin: ``_new_conn`` connects through the policy; TLS certificate
    checks, SNI and the Host header still use the host name."""

    policy: AddressPolicy
    deadline: _Deadline | None = None

    def _new_conn(self) -> socket.socket:
        host = self.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(host, self, exc) from exc  # type: ignore[arg-type]
        checked, refusal = [], None
        for family, _, _, _, address in infos:
            try:
                self.policy.check_address(host, address[0], self.port)
                checked.append((family, address))
            except ForbiddenURL as exc:
                refusal = exc
        if not checked:  # refused before any connection attempt
            raise refusal or ForbiddenURL(f"host {host!r} has no address")
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        error: OSError | None = None
        for family, address in checked:
            try:
                return _connect(family, address, timeout, self.socket_options)
            except OSError as exc:
                error = exc
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"connecting to {host} timed out") from error
        raise NewConnectionError(self, f"cannot connect to {host}: {error}") from error  # type: ignore[arg-type]

    def getresponse(self) -> Any:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)
        return super().getresponse()  # type: ignore[misc]


class _ReleasingPool:
    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            with _watch_lock:
                conn.deadline = None
        super()._put_conn(conn)  # type: ignore[misc]


def _pool_classes(policy: AddressPolicy) -> dict[str, type]:
    def pool(base: type, connection: type) -> type:
        pinned = type(f"Pinned{connection.__name__}", (_PinnedConnection, connection), {"policy": policy})
        return type(f"Pinned{base.__name__}", (_ReleasingPool, base), {"ConnectionCls": pinned})

    return {"http": pool(HTTPConnectionPool, HTTPConnection), "https": pool(HTTPSConnectionPool, HTTPSConnection)}


# --- Label Studio's API key ----------------------------------------------------------------------

def _renew_at(access: str) -> float:
    """When to replace an access token: shortly before the ``exp`` of its JWT payload."""
    now = time.time()
    try:
        payload = access.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, AttributeError):
        exp = None
    valid = isinstance(exp, (int, float)) and not isinstance(exp, bool)
    lifetime = exp - now if valid else _ACCESS_LIFETIME
    return now + lifetime - min(_RENEW_MARGIN, max(lifetime, 0.0) / 10)


class _LabelStudioAuth:
    """The Authorization header for Label Studio: a legacy key is sent as ``Token``; a personal
    access token (a JWT) is exchanged for an access token, kept until shortly before it expires."""

    def __init__(self, key: str | None, exchange: Callable[[str, _Deadline], str]) -> None:
        self.key = key or None
        self.personal = self.key is not None and _JWT.fullmatch(self.key) is not None
        self._exchange = exchange
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None  # (header, time.time() to renew at)

    def header(self, deadline: _Deadline) -> str | None:
        if not self.personal:
            return f"Token {self.key}" if self.key else None
        current = self._access
        if current is not None and time.time() < current[1]:
            return current[0]
        # One exchange at a time; the threads waiting here then use its token.
        if not self._lock.acquire(timeout=max(deadline.remaining(), 0.0)):
            raise FetchError(504, "timed out waiting for a Label Studio access token")
        try:
            current = self._access
            if current is None or time.time() >= current[1]:
                access = self._exchange(self.key or "", deadline)
                current = self._access = (f"Bearer {access}", _renew_at(access))
            return current[0]
        finally:
            self._lock.release()

    def refused(self, header: str | None) -> bool:
        """Forget an access token Label Studio refused; True when a new one may help."""
        if not self.personal or header is None:
            return False
        with self._lock:
            if self._access is not None and self._access[0] == header:
                self._access = None
        return True


# --- helpers --------------------------------------------------------------------------------------

def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), parts.port or {"http": 80, "https": 443}.get(scheme)


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


@contextmanager
def _resolving(value: str, scheme: str) -> Iterator[None]:
    """Name the cloud URI in a failure to fetch what Label Studio resolved it to."""
    try:
        yield
    except FetchError as exc:
        if scheme in CLOUD_SCHEMES:
            raise FetchError(exc.status, f"{exc.message} (resolving {display_url(value)})") from None
        raise


def _parse_value(value: str) -> tuple[str, str]:
    """A task's data value, stripped, and its URL scheme (lower case; "" for a path)."""
    if not isinstance(value, str) or not value.strip():
        raise FetchError(422, "the task has no file URL")
    value = value.strip()
    match = _SCHEME.match(value)
    return value, match.group(1).lower() if match else ""


def _same_parse(url: str, parts: SplitResult) -> None:
    """Refuse a URL whose host the standard library and urllib3 read differently: decisions
    (is it Label Studio? the same origin?) are taken on one reading, the connection on the
    other, so ``http://evil\\@label-studio/`` would carry Label Studio's token to evil."""
    try:
        theirs = parse_url(url)
    except LocationValueError:
        raise ForbiddenURL(f"malformed URL {display_url(url)}") from None
    try:  # urllib3 reads an international name as its ASCII (punycode) form
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        raise ForbiddenURL(f"malformed host name in {display_url(url)}") from None
    ours = host.rstrip(".").lower(), parts.port
    if ((theirs.host or "").strip("[]").rstrip(".").lower(), theirs.port) != ours:
        raise ForbiddenURL(f"ambiguous URL {display_url(url)}: its host reads two ways")


def _decode_data_url(url: str, limit: int) -> bytes:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise FetchError(422, "malformed data: URL: no comma before the data")
    too_large = FetchError(413, f"the data: URL holds more than MAX_IMAGE_BYTES ({limit} bytes)")
    if header.lower().endswith(";base64"):
        text = re.sub(r"\s+", "", unquote(payload) if "%" in payload else payload)
        if len(text) > (limit + 2) // 3 * 4:  # refused by its encoded length, before decoding
            raise too_large
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise FetchError(422, "malformed data: URL: the data is not valid base64") from None
    else:
        if len(payload) > 3 * limit:  # each byte takes at most three characters ("%xx")
            raise too_large
        data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise too_large
    return data


# --- the fetcher ----------------------------------------------------------------------------------

class ImageFetcher:
    """Fetches task images under the SSRF policy, with pooled connections and an LRU cache."""

    def __init__(self, settings: Settings, *, on_cache: Callable[[bool], None] | None = None) -> None:
        self._settings = settings
        self._on_cache = on_cache
        self._policy = AddressPolicy.build(settings.label_studio_url, settings.fetch_allowed_hosts)
        self._ls = settings.label_studio_url
        self._ls_origin = None
        if self._ls:
            try:
                parts = urlsplit(self._ls)
                if parts.scheme.lower() in ("http", "https") and parts.hostname:
                    self._ls_origin = _origin(parts)
            except ValueError:
                pass
        key = settings.label_studio_api_key.get_secret_value().strip() if settings.label_studio_api_key else None
        self._auth = _LabelStudioAuth(key, self._exchange)
        context = create_urllib3_context()
        context.load_default_certs()  # urllib3 loads them only into contexts it creates itself
        self._http = PoolManager(num_pools=16, maxsize=2 * WORKERS, ssl_context=context)
        self._http.pool_classes_by_scheme = _pool_classes(self._policy)
        self._cache: SingleFlightLRU[tuple[str, str | None], bytes] = SingleFlightLRU(
            max_bytes=settings.image_cache_bytes, size=len
        )
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def fetch(self, value: str, *, task_id: int | None = None,
              credentials: tuple[str, str] | None = None, cached: bool = True) -> bytes:
        """The bytes ``value`` (a task's image field) points to; raises FetchError or ForbiddenURL.
        ``cached=False`` fetches afresh and keeps nothing (for a caller that keeps what it
        derives from the bytes and fetches again only to check them)."""
        value, scheme = _parse_value(value)
        if scheme == "data":
            return _decode_data_url(value, self._settings.max_image_bytes)
        url, via_ls, key, basic, digest = self._target(value, scheme, task_id, credentials)
        with _resolving(value, scheme):
            if not cached:
                return self._load(url, via_ls, basic)
            return self._cached((key, digest), lambda: self._load(url, via_ls, basic))

    def identity(self, value: str, *, task_id: int | None = None, credentials: tuple[str, str] | None = None) -> str:
        """A name for what ``fetch`` would return, without fetching: the URL fetched (a cloud
        URI as written) and a digest of the credentials it is fetched with; a data: URL by
        the hash of its text. Refuses what ``fetch`` refuses before connecting."""
        value, scheme = _parse_value(value)
        if scheme == "data":
            return "data:sha256:" + hashlib.sha256(value.encode()).hexdigest()
        _, _, key, _, digest = self._target(value, scheme, task_id, credentials)
        return repr((key, digest))

    def fetch_to(self, value: str, sink: BinaryIO, *, limit: int, timeout: float, task_id: int | None = None,
                 credentials: tuple[str, str] | None = None) -> int:
        """Stream what ``value`` points to into ``sink`` (a video, never held in memory whole),
        at most ``limit`` bytes within ``timeout`` seconds; the bytes written. Not cached."""
        value, scheme = _parse_value(value)
        if scheme == "data":
            data = _decode_data_url(value, limit)
            sink.write(data)
            return len(data)
        url, via_ls, _, basic, _ = self._target(value, scheme, task_id, credentials)
        with _resolving(value, scheme):
            return self._load(url, via_ls, basic, sink=sink, limit=limit, timeout=timeout)

    def _target(self, value: str, scheme: str, task_id: int | None,
                credentials: tuple[str, str] | None) -> tuple[str, bool, str, str | None, str | None]:
        """(URL to fetch, is it Label Studio's, cache key, basic auth header, credentials digest)."""
        if value.startswith("/"):
            url = self._label_studio(f"{urlsplit(value).path} is a Label Studio path") + value
            via_ls, key = True, url
        elif scheme in CLOUD_SCHEMES:
            # Label Studio resolves a URI for a task of a project whose storage holds it: a
            # URI in another project's task must be resolved (and maybe refused) for that task.
            url, via_ls, key = self._resolve_url(value, task_id), True, f"{value} (task {task_id})"
        else:
            parts = self._policy.check_url(value)
            url, key = value, value
            via_ls = self._ls_origin is not None and _origin(parts) == self._ls_origin
        basic = digest = None
        if credentials and any(credentials) and not via_ls:
            user, password = (str(part or "") for part in credentials)
            basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            # Bytes fetched with one project's credentials are never served without them.
            digest = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        return url, via_ls, key, basic, digest

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
        self._http.clear()

    def _try_fetch(self, value: str, task_id: int | None, credentials: tuple[str, str] | None) -> bytes | Exception:
        try:
            return self.fetch(value, task_id=task_id, credentials=credentials)
        except Exception as exc:  # noqa: BLE001 - returned to the caller in the item's place
            return exc

    def _label_studio(self, what: str) -> str:
        if not self._ls:
            raise FetchError(422, f"{what}: set LABEL_STUDIO_URL to fetch it")
        if self._ls_origin is None:
            raise FetchError(422, f"{what}, but LABEL_STUDIO_URL is not an http(s) URL")
        return self._ls

    def _resolve_url(self, uri: str, task_id: int | None) -> str:
        what = f"{display_url(uri)} is a cloud storage URI"
        base = self._label_studio(what)
        if task_id is None:
            raise FetchError(422, f"{what} that Label Studio resolves per task, and no task id came with it")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"{base}/tasks/{int(task_id)}/resolve/?{urlencode({'fileuri': fileuri})}"

    def _cached(self, key: tuple[str, str | None], load: Callable[[], bytes]) -> bytes:
        try:
            data, hit = self._cache.get_or_load(key, load, wait=self._settings.fetch_timeout + 1.0)
        except FutureTimeout:  # waited on another request's fetch of the same image
            raise FetchError(504, f"timed out waiting for {display_url(key[0])}") from None
        if self._on_cache is not None and self._cache.enabled:
            self._on_cache(hit)
        return data

    def _load(self, url: str, via_ls: bool, basic: str | None, sink: BinaryIO | None = None,
              limit: int | None = None, timeout: float | None = None) -> Any:
        deadline = _Deadline(timeout or self._settings.fetch_timeout)
        _current.deadline = deadline
        try:
            return self._download(url, via_ls, basic, deadline, sink, limit or self._settings.max_image_bytes)
        finally:
            deadline.cancel()
            _current.deadline = None

    def _download(self, url: str, via_ls: bool, basic: str | None, deadline: _Deadline,
                  sink: BinaryIO | None, limit: int) -> Any:
        origin = _origin(urlsplit(url))
        same_origin, retried, hops = True, False, 0
        while True:
            parts = self._policy.check_url(url)
            if parts.scheme.lower() not in ("http", "https"):
                raise ForbiddenURL(f"a redirect to a {parts.scheme} URL is not followed")
            _same_parse(url, parts)
            # Credentials go to the first origin only; once a redirect leaves it they stay off.
            same_origin = same_origin and _origin(parts) == origin
            auth = (self._auth.header(deadline) if via_ls else basic) if same_origin else None
            # Ask for the bytes as stored: a compressed image gains nothing, a gzip bomb costs.
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if auth:
                headers["Authorization"] = auth
            with self._errors(url, deadline):
                response = self._request("GET", url, headers, deadline)
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
                    return self._read_body(response, url, deadline, limit, sink)
                finally:
                    _discard(response)

    def _exchange(self, key: str, deadline: _Deadline) -> str:
        """Label Studio's access token for a personal access token (no Authorization header)."""
        url = self._label_studio("exchanging LABEL_STUDIO_API_KEY") + "/api/token/refresh/"
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        with self._errors(url, deadline):
            response = self._request("POST", url, headers, deadline, json.dumps({"refresh": key}).encode())
            try:
                if response.status != 200:
                    raise FetchError(502, f"Label Studio answered {response.status} for {urlsplit(url).path}: "
                                          "check LABEL_STUDIO_API_KEY (a personal access token)")
                body = self._read_body(response, url, deadline, _TOKEN_BYTES)
            finally:
                _discard(response)
        try:
            access = json.loads(body)["access"]
        except (ValueError, KeyError, TypeError):
            access = None
        if not isinstance(access, str) or not access:
            raise FetchError(502, f"Label Studio's answer for {urlsplit(url).path} has no access token")
        return access

    def _request(self, method: str, url: str, headers: dict[str, str], deadline: _Deadline,
                 body: bytes | None = None) -> BaseHTTPResponse:
        for attempt in (1, 2):
            remaining = deadline.remaining()
            if remaining <= 0:
                raise self._timeout(url)
            try:
                return self._http.urlopen(method, url, body=body, headers=headers, redirect=False, retries=False,
                                          preload_content=False, timeout=Timeout(remaining))
            except ProtocolError as exc:
                # A pooled connection the server closed as the request went out: once more, on a new one.
                dropped = bool(exc.args) and isinstance(exc.args[-1], ConnectionError)
                if attempt == 2 or deadline.fired or not dropped:
                    raise
        raise AssertionError("unreachable")

    def _read_body(self, response: BaseHTTPResponse, url: str, deadline: _Deadline, limit: int,
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
            if deadline.remaining() <= 0:
                raise self._timeout(url)
        if deadline.fired:  # a socket shut down by the deadline reads as the end of the body
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
    def _errors(self, url: str, deadline: _Deadline) -> Iterator[None]:
        """urllib3's and the socket's errors as FetchError, without the URL's secrets."""
        try:
            yield
        except LocationValueError:
            raise FetchError(422, f"cannot fetch {display_url(url)}: malformed URL") from None
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            timed_out = isinstance(exc, Urllib3Timeout) and not isinstance(exc, NewConnectionError)
            if timed_out or deadline.remaining() <= 0:
                raise self._timeout(url) from None
            raise FetchError(502, f"cannot fetch {display_url(url)}: {_reason(exc)}") from None
