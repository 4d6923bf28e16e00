"""A local scale-to-zero platform: what Cloud Run or Modal does in front of a GPU function that
scaled to zero, on a loopback port.

The first request it receives starts `lsfn serve FUNCTION` (after ``start_delay``, the time a
platform takes to find a GPU and pull the image), and is held until the function listens; then
every request is forwarded to the function. After ``idle`` seconds without a request the
process is stopped, and the next request starts it again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import urllib3

from tests.serving import Function

__all__ = ["Forwarded", "ScaleToZero"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass(frozen=True)
class Forwarded:
    method: str
    path: str
    status: int
    body: bytes  # the request's body
    cold: bool  # this request started the function


class ScaleToZero:
    def __init__(
        self, function: str | Path, tmp: Path, env: dict[str, str | None], model_root: Path | None = None,
        idle: float = 3.0, start_delay: float = 0.0, args: tuple[str, ...] = (), bearer: str | None = None,
    ) -> None:  # fmt: skip
        """``bearer``: the token every request must carry, as Cloud Run's IAM check of a private
        service demands an ID token (others are refused with 403 and start nothing)."""
        self.bearer = bearer
        self._spawn = lambda: Function(function, tmp / f"run-{self.starts}", env, model_root, args=args)
        self.idle = idle
        self.start_delay = start_delay
        self.starts = 0
        self.forwarded: list[Forwarded] = []
        self._fn: Function | None = None
        self._lock = threading.Lock()  # held while the function starts: requests wait, as on Cloud Run
        self._in_flight = 0
        self._starting = False
        self._last = time.monotonic()
        self._closed = threading.Event()
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300), maxsize=32)
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                status, answer_headers, data = platform._forward(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in answer_headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()

    @property
    def running(self) -> bool:
        """Started or starting (a request is held through the start delay)."""
        return self._fn is not None or self._starting

    def wait_stopped(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                raise TimeoutError("the function did not scale to zero")
            time.sleep(0.1)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.bearer is not None and headers.get("Authorization") != f"Bearer {self.bearer}":
            self.forwarded.append(Forwarded(method, path, 403, body, False))
            return 403, {"Content-Type": "text/plain"}, b"Forbidden: no valid identity token"
        with self._lock:
            self._in_flight += 1
            cold = self._fn is None
            try:
                if cold:
                    self._starting = True
                    time.sleep(self.start_delay)
                    self.starts += 1
                    self._fn = self._spawn()
            except Exception:
                self._in_flight -= 1
                raise
            finally:
                self._starting = False
            url = self._fn.url
        try:
            response = self._http.request(method, url + path, body=body or None, headers=headers)
            status, answer_headers, data = response.status, dict(response.headers), response.data
        except urllib3.exceptions.HTTPError as exc:  # the function died under the request
            status, answer_headers, data = 502, {}, str(exc).encode()
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last = time.monotonic()
        self.forwarded.append(Forwarded(method, path, status, body, cold))
        return status, answer_headers, data

    def _reap(self) -> None:
        while not self._closed.wait(0.1):
            with self._lock:
                if self._fn is not None and self._in_flight == 0 and time.monotonic() - self._last > self.idle:
                    self._fn.close()
                    self._fn = None

    def close(self) -> None:
        self._closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            if self._fn is not None:
                self._fn.close()
                self._fn = None
