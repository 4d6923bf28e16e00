"""Loading the model in the background while the server already answers.

Label Studio gives /health one second, so the server must listen before weights are loaded:
``Loader.start`` runs setup() and warmup() in a thread and the routes read its state. It is
started by the first request or explicitly (``lsfn serve`` does it as the worker starts). A
server that forks workers after importing the app (gunicorn) gets a fresh loader in the child:
threads do not survive a fork, and the model must be loaded where requests are served.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from enum import Enum

from lsfn.shared.runtime.logs import logger

__all__ = ["Loader", "State"]


class State(str, Enum):
    IDLE = "idle"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Loader:
    def __init__(self, steps: Callable[[], None], on_change: Callable[[State], None] | None = None) -> None:
        self._steps = steps
        self._on_change = on_change
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._pid = os.getpid()
        self.state = State.IDLE
        self.error: str | None = None
        self.load_seconds: float | None = None

    def start(self) -> None:
        """Start loading unless it already started in this process (cheap; called per request)."""
        if self.state is not State.IDLE:
            return
        with self._lock:
            if self.state is not State.IDLE:
                return
            self._set(State.LOADING)
            threading.Thread(target=self._run, name="lsfn-load", daemon=True).start()

    def wait(self, timeout: float) -> State:
        """Wait up to ``timeout`` seconds for loading to end; the state then."""
        self._done.wait(timeout)
        return self.state

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._steps()
        except BaseException as exc:  # noqa: BLE001 - any failure is reported by /health
            self.error = f"{type(exc).__name__}: {exc}"
            self.load_seconds = time.perf_counter() - started
            logger.exception("model failed to load", extra={"load_seconds": round(self.load_seconds, 3)})
            self._set(State.FAILED)
        else:
            self.load_seconds = time.perf_counter() - started
            logger.info("model ready", extra={"load_seconds": round(self.load_seconds, 3)})
            self._set(State.READY)
        finally:
            self._done.set()

    def _set(self, state: State) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
