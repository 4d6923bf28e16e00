"""Starting and stopping the servers a benchmark measures (standard library only: the
baseline's environment imports bench modules too)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["free_port", "serve_function", "start_group", "stop_group", "wait_healthy"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_group(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group (stopping it ends gunicorn's workers too)."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_healthy(process: subprocess.Popen[bytes], port: int, timeout: float, host: str = "127.0.0.1") -> str | None:
    """Poll GET /health every 50 ms until it answers 200: None then, else why it did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode} before it was ready"
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(host, port, timeout=2)
            try:
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return None
            finally:
                conn.close()
        time.sleep(0.05)
    return f"/health did not answer 200 within {timeout:g} s"


def serve_function(name: str, root: Path, env: dict[str, str], log: Path, host: str = "127.0.0.1",
                   timeout: float = 600) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    """`lsfn serve NAME` on a free port, once /health answers 200: (process, port). Exits with
    the function's log when it does not become ready."""
    port = free_port(host)
    argv = [sys.executable, "-m", "lsfn.shared.cli", "serve", name, "--port", str(port), "--host", host]
    process = start_group(argv, root, env, log)
    why = wait_healthy(process, port, timeout, host)
    if why is not None:
        stop_group(process)
        raise SystemExit(f"the {name} function {why}:\n{log.read_text(errors='replace')[-4000:]}")
    return process, port
