"""A stand-in for Cloud Run's Admin API (v2, REST) on a loopback port, for driving
``google-cloud-run``'s own REST transport: services are created, read and patched (their
long-running operations answered as done), IAM policies carry etags and refuse a write with a
stale one. Every request is recorded; errors can be injected."""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeCloudRun", "Request"]

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]


@dataclass
class FakeCloudRun:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # Injected failures: (method, path regex) -> (HTTP status, gRPC status name), used once each.
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            do_POST = do_PATCH = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._lock = threading.Lock()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str | None = None) -> list[str]:
        """``METHOD path`` of each recorded request (of one method)."""
        return [f"{r.method} {r.path}" for r in self.requests if method in (None, r.method)]

    # -- the API ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        request = Request(handler.command, url.path, parse_qs(url.query), body)
        with self._lock:
            self.requests.append(request)
            status, answer = self._answer(request)
        data = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        for failure in self.failures:
            method, pattern, status, name = failure
            if method == request.method and re.search(pattern, request.path):
                self.failures.remove(failure)
                return status, _error(status, name, f"injected {name}")
        path = request.path.removeprefix("/v2/")
        if path.endswith(":getIamPolicy"):
            return 200, self._policy(path.removesuffix(":getIamPolicy"))
        if path.endswith(":setIamPolicy"):
            return self._set_policy(path.removesuffix(":setIamPolicy"), request.body["policy"])
        if request.method == "GET":
            found = self.services.get(path)
            return (200, found) if found else (404, _error(404, "NOT_FOUND", f"Resource '{path}' was not found"))
        if request.method == "POST":  # create: parent/services?serviceId=
            name = f"{path}/{request.query['serviceId'][0]}"
            if name in self.services:
                return 409, _error(409, "ALREADY_EXISTS", f"{name} already exists")
            return 200, self._store(name, request.body, generation=1)
        if request.method == "PATCH":
            if path not in self.services:
                return 404, _error(404, "NOT_FOUND", f"Resource '{path}' was not found")
            return 200, self._store(path, request.body, generation=int(self.services[path]["generation"]) + 1)
        return 400, _error(400, "INVALID_ARGUMENT", "unexpected request")

    def _store(self, name: str, service: dict[str, Any], generation: int) -> dict[str, Any]:
        service_id = name.rsplit("/", 1)[1]
        stored = {**service, "name": name, "uri": f"https://{service_id}-abc123-ez.a.run.app", "generation": str(generation)}
        self.services[name] = stored
        return {"name": f"{name.rsplit('/services/', 1)[0]}/operations/{len(self.requests)}", "done": True,
                "response": {"@type": SERVICE_TYPE, **stored}}  # fmt: skip

    def _policy(self, resource: str) -> dict[str, Any]:
        return self.policies.setdefault(resource, {"version": 1, "bindings": [], "etag": _etag(0)})

    def _set_policy(self, resource: str, policy: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        current = self._policy(resource)
        if policy.get("etag") != current["etag"]:
            return 409, _error(409, "ABORTED", "There were concurrent policy changes")
        serial = int(base64.b64decode(current["etag"]).decode()) + 1
        self.policies[resource] = {**policy, "etag": _etag(serial)}
        return 200, self.policies[resource]

    def change_policy_behind_the_callers_back(self, resource: str) -> None:
        """Another writer: the etag moves on (a caller holding the old one gets 409)."""
        policy = self._policy(resource)
        policy["etag"] = _etag(int(base64.b64decode(policy["etag"]).decode()) + 100)


def _etag(serial: int) -> str:
    return base64.b64encode(str(serial).encode()).decode()


def _error(status: int, name: str, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": name}}
