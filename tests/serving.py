"""Serving a function for tests: `lsfn serve` in a subprocess, and a small HTTP client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import urllib3

from tests.servers import free_port, stop_group

__all__ = ["HTTP", "Function", "call", "fixed_id_token", "network_attempts", "network_guard", "wait_listening"]

ROOT = Path(__file__).parent.parent
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=120))


def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> urllib3.BaseHTTPResponse:
    headers = dict(headers or {})
    if body is not None:
        raw = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    return HTTP.request(method, url, body=raw, headers=headers)


_NETWORK_GUARD = '''
import os, socket
_log = os.environ.get("NETWORK_ATTEMPTS")

def _record(what):
    with open(_log, "a") as fh:
        fh.write(repr(what) + "\\n")
    raise OSError(101, "network access is blocked in this process")

def _local(host):
    return host in (None, "localhost", "") or str(host).startswith(("127.", "::1"))

_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect

def getaddrinfo(host, *args, **kwargs):
    if not _local(host if not isinstance(host, bytes) else host.decode()):
        _record(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _record(("connect", address))
    return _connect(self, address)

if _log:
    socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
'''


def network_guard(tmp: Path) -> dict[str, str]:
    """Environment variables for a function process whose every non-loopback name lookup or
    connection is refused and recorded (see ``network_attempts``)."""
    guard = tmp / "guard"
    guard.mkdir(parents=True, exist_ok=True)
    (guard / "sitecustomize.py").write_text(_NETWORK_GUARD)
    return {"PYTHONPATH": str(guard), "NETWORK_ATTEMPTS": str(tmp / "attempts.txt")}


def fixed_id_token(tmp: Path, token: str) -> dict[str, str]:
    """Environment variables for a front door process whose Google ID tokens (no metadata server
    here) are ``token``, which the local stand-in for the private GPU service checks."""
    folder = tmp / "id-token"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import lsfn.shared.runtime.id_token as _tokens\n"
        f"_tokens._fetch_from_google = lambda audience: {token!r}\n"
    )
    return {"PYTHONPATH": str(folder)}


def network_attempts(tmp: Path) -> str:
    """What a guarded process tried to reach ("" when nothing)."""
    attempts = tmp / "attempts.txt"
    return attempts.read_text() if attempts.exists() else ""


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the server did not listen")


class Function:
    """`lsfn serve SOURCE` in a subprocess with MODEL_ROOT in ``tmp``, its log in a file."""

    def __init__(
        self,
        source: str | Path,
        tmp: Path,
        env: dict[str, str | None],
        model_root: Path | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """``env`` adds to the inherited environment; a None value leaves the variable unset;
        ``args`` are added to `lsfn serve` (``("--upstream", url)`` serves the front door)."""
        self.model_root = model_root or tmp / "models"
        self.model_root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / f"function-{os.getpid()}-{time.monotonic_ns()}.log"
        port = port or free_port()
        self.port = port
        inherited = ("LABEL_STUDIO", "BASIC_AUTH", "MAX_", "FETCH_", "MODEL_", "WEBHOOK_", "UPSTREAM_", "PREDICT_", "ADMIT_")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        full_env.update({"MODEL_ROOT": str(self.model_root), "LOG_LEVEL": "DEBUG"})
        full_env.update({k: v for k, v in env.items() if v is not None})
        for key in [k for k, v in env.items() if v is None]:
            full_env.pop(key, None)
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsfn.shared.cli", "serve", str(source), "--port", str(port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_listening(port, self.proc)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = call("GET", self.url + "/health")
            if health.status == 200:
                return
            if b'"FAILED"' in health.data:
                raise RuntimeError(f"the model failed to load: {self.log_path.read_text()[-3000:]}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"the function exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"the model did not become ready: {self.log_path.read_text()[-2000:]}")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def close(self) -> None:
        stop_group(self.proc)
        self.log.close()
