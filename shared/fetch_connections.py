"""The image fetcher's connection pool: the address checked is the address connected to.

Each connection resolves its host itself, checks every address with ``AddressPolicy`` and
connects the socket to an address it checked: there is no gap for DNS rebinding. A fetch runs
under a ``Deadline`` that ends a slow read by shutting its socket down.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.ssl_ import create_urllib3_context

from lsfn.shared.ssrf import AddressPolicy, ForbiddenURL

__all__ = ["Deadline", "deadline", "pinned_pool"]

_current = threading.local()  # the Deadline of the fetch running on this thread
_watch_lock = threading.Lock()


class Deadline:
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


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """A Deadline that the connections this thread uses until the block ends are watched by."""
    current = Deadline(seconds)
    _current.deadline = current
    try:
        yield current
    finally:
        current.cancel()
        _current.deadline = None


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
    deadline: Deadline | None = None

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
        current = getattr(_current, "deadline", None)
        if current is not None:
            current.watch(self)
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


def pinned_pool(policy: AddressPolicy, maxsize: int) -> PoolManager:
    """A PoolManager whose every connection goes through ``policy``, ``maxsize`` per host."""
    context = create_urllib3_context()
    context.load_default_certs()  # urllib3 loads them only into contexts it creates itself
    pool = PoolManager(num_pools=16, maxsize=maxsize, ssl_context=context)
    pool.pool_classes_by_scheme = _pool_classes(policy)
    return pool
