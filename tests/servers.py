"""Small HTTP servers for tests: stand-ins for Label Studio, file hosts and forbidden targets.

Each records every request it receives, so a test can assert that a forbidden target was never
contacted, and answers from a table of routes the test fills in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["Answer", "Hit", "RecordingServer", "free_port", "stop_group"]


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Route = Answer | Callable[[Hit], Answer]


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL after."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RecordingServer:
    """A threaded HTTP server on ``host`` answering ``routes[path]`` (path without the query,
    or the full path with it) and recording every request in ``hits``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hit = Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                server.hits.append(hit)
                route = server.routes.get(self.path, server.routes.get(urlsplit(self.path).path))
                answer = Answer(404, b"not found") if route is None else route if isinstance(route, Answer) else route(hit)
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in answer.headers:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args: object) -> None:
                pass

        server_class = ThreadingHTTPServer
        if ":" in host:  # an IPv6 address

            class server_class(ThreadingHTTPServer):  # type: ignore[no-redef]
                address_family = socket.AF_INET6

        self.httpd = server_class((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
