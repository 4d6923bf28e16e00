"""The front door's view of its GPU function: calls retried through a cold start, the last known
state, the versions it answered, and the metrics of all that.

A scaled-to-zero upstream first refuses connections or answers 503 "loading" (its model is
still being set up), and a busy one answers 429/503 with ``Retry-After``: those are retried
until the caller's time runs out. Any other answer is the upstream's answer and is returned as
it is. The state is only what the front door has seen: it never asks the upstream just to find
out (that would wake it), and after UPSTREAM_IDLE_TIMEOUT without an answer it assumes the
upstream scaled to zero.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from enum import Enum

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import Enum as EnumMetric

from lsfn.shared.runtime.logs import logger
from lsfn.shared.runtime.metrics import LATENCY_BUCKETS
from lsfn.shared.runtime.service import DEADLINE_HEADER
from lsfn.shared.runtime.upstream import Answer, Unreachable, Upstream
from lsfn.shared.settings import Settings

__all__ = ["RETURN_MARGIN", "WAKE_INTERVAL", "Status", "UpstreamLink", "config_key"]

_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 2.0
_RETRY_AFTER_MAX = 10.0  # a longer Retry-After is taken as this (the platform's guess, not a promise)
_KNOWN_CONFIGS = 256  # label configs whose upstream version is remembered
# Time kept back from what is passed on as the upstream's deadline, for its answer to travel back.
RETURN_MARGIN = 1.0
# A /setup does not wake an upstream that answered this recently.
WAKE_INTERVAL = 10.0


class Status(str, Enum):
    COLD = "cold"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"


def config_key(label_config: str | None) -> str:
    return hashlib.sha256((label_config or "").encode()).hexdigest()


def _json_fields(answer: Answer) -> dict[str, str]:
    """The status, error and detail of a runtime's JSON error body (empty for a 2xx-4xx other
    than 429, and when not JSON): read once per answer."""
    if answer.status < 500 and answer.status != 429:
        return {}
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(body, dict):
        return {}
    return {key: str(body.get(key) or "")[:500] for key in ("status", "error", "detail")}


def _loading(answer: Answer, fields: dict[str, str]) -> bool:
    return answer.status == 503 and (fields.get("status") == "LOADING" or fields.get("error") == "model is loading")


def _retry_after(answer: Answer, fields: dict[str, str]) -> float | None:
    """Seconds to wait before trying again, or None when the answer is final."""
    if answer.status not in (429, 503):
        return None
    if fields.get("error") == "deadline":
        return None  # the upstream ran out of the time it was given: so has the caller
    header = answer.headers.get("Retry-After")
    if header:
        try:
            return min(max(float(header), 0.1), _RETRY_AFTER_MAX)
        except ValueError:
            return 1.0
    return 1.0 if _loading(answer, fields) else None


class UpstreamLink:
    def __init__(self, upstream: Upstream, settings: Settings, registry: CollectorRegistry) -> None:
        self.upstream = upstream
        self.settings = settings
        self._lock = threading.Lock()
        self._status = Status.COLD
        self._reason: str | None = None
        self._last_answer: float | None = None  # time.monotonic() of its last answer
        self._changed = time.monotonic()  # when the state was last set
        self._versions: OrderedDict[str, str] = OrderedDict()  # config key -> upstream's version
        self._listed: list[str] | None = None  # the upstream's last /versions list
        self._waking = False
        r = registry
        self.latency = Histogram(
            "lsfn_upstream_duration_seconds", "Calls to the upstream by route, retries and cold-start waits included",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.attempts = Counter(
            "lsfn_upstream_attempts", "Attempts to reach the upstream by route and outcome "
            "(answered, loading, throttled, refused, timeout)", ["route", "outcome"], registry=r,
        )  # fmt: skip
        self.retries = Counter("lsfn_upstream_retries", "Attempts repeated after a cold or busy answer", ["route"], registry=r)
        self.cold_waits = Histogram(
            "lsfn_upstream_cold_start_wait_seconds", "Calls that waited for a cold upstream, and how long",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.wakeups = Counter("lsfn_upstream_wakeups", "Wake-ups started by /setup, by outcome", ["outcome"], registry=r)
        self.state_metric = EnumMetric(
            "lsfn_upstream_state", "The upstream's last known state", states=[s.value for s in Status], registry=r
        )
        self.state_metric.state(Status.COLD.value)

    # -- state -------------------------------------------------------------------------------

    def status(self) -> tuple[Status, str | None, float | None]:
        """(state, failure reason, seconds since the upstream last answered). A ready upstream
        silent for UPSTREAM_IDLE_TIMEOUT, or a warming one that came to nothing within
        UPSTREAM_TIMEOUT, is taken to be cold."""
        now = time.monotonic()
        with self._lock:
            status, reason, last, changed = self._status, self._reason, self._last_answer, self._changed
        age = None if last is None else now - last
        if status is Status.READY and age is not None and age > self.settings.upstream_idle_timeout:
            status = Status.COLD
        elif status is Status.WARMING and now - changed > self.settings.upstream_timeout:
            status = Status.COLD
        self.state_metric.state(status.value)
        return status, reason, age

    def _set(self, status: Status, reason: str | None = None) -> None:
        with self._lock:
            if status is Status.WARMING and self._status is Status.READY and self._fresh():
                return  # a busy answer from a warm upstream
            self._status, self._reason, self._changed = status, reason, time.monotonic()
            if status in (Status.READY, Status.FAILED):
                self._last_answer = self._changed
        self.state_metric.state(status.value)

    def _fresh(self) -> bool:
        last = self._last_answer
        return last is not None and time.monotonic() - last <= self.settings.upstream_idle_timeout

    def version_for(self, label_config: str | None) -> str | None:
        """The version the upstream answered /setup with for this label config, if known."""
        key = config_key(label_config)
        with self._lock:
            version = self._versions.get(key)
            if version is not None:
                self._versions.move_to_end(key)
            return version

    def listed_versions(self) -> list[str] | None:
        return self._listed

    # -- calls -------------------------------------------------------------------------------

    def call(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], until: float, route: str,
        pass_deadline: bool = False,
    ) -> Answer:  # fmt: skip
        """The upstream's answer, retrying a cold or busy upstream until ``until``
        (time.monotonic()); raises Unreachable when no final answer came by then. With
        ``pass_deadline`` each attempt tells the upstream the time left (``X-Predict-Deadline``,
        less a margin for the answer's way back)."""
        started = time.monotonic()
        backoff = _BACKOFF_FIRST
        waited_cold = False
        last_problem = "no time left"
        if self.status()[0] is Status.COLD:
            self._set(Status.WARMING)  # this call wakes it (a platform holds it while it starts)
        try:
            while True:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    self._give_up(last_problem)
                    raise Unreachable(last_problem, timed_out=True)
                sent = dict(headers)
                if pass_deadline:
                    if remaining <= RETURN_MARGIN:  # no time for the upstream to do anything
                        raise Unreachable(f"{last_problem}; no time left to send it on", timed_out=True)
                    sent[DEADLINE_HEADER] = f"{remaining - RETURN_MARGIN:.3f}"
                try:
                    answer = self.upstream.call(method, path, body, sent, remaining)
                except Unreachable as exc:
                    self.attempts.labels(route, "timeout" if exc.timed_out else "refused").inc()
                    if exc.timed_out:
                        raise
                    last_problem, waited_cold = str(exc), True
                    self._set(Status.WARMING)
                    pause, backoff = backoff, min(backoff * 2, _BACKOFF_MAX)
                else:
                    fields = _json_fields(answer)
                    pause = _retry_after(answer, fields)
                    if pause is None or pause >= until - time.monotonic():  # final, or no time to wait
                        self.attempts.labels(route, "answered").inc()
                        self._answered(answer, fields)
                        if waited_cold:
                            self.cold_waits.observe(time.monotonic() - started)
                        return answer
                    loading = _loading(answer, fields)
                    self.attempts.labels(route, "loading" if loading else "throttled").inc()
                    last_problem = f"upstream answered {answer.status}" + (" (model loading)" if loading else "")
                    if loading:
                        waited_cold = True
                        self._set(Status.WARMING)
                self.retries.labels(route).inc()
                time.sleep(max(0.0, min(pause, until - time.monotonic())))
        finally:
            self.latency.labels(route).observe(time.monotonic() - started)

    def _answered(self, answer: Answer, fields: dict[str, str]) -> None:
        if fields.get("status") == "FAILED" or fields.get("error") == "model failed to load":
            self._set(Status.FAILED, f"the model failed to load: {fields.get('detail', '')}")
        elif answer.status < 500 or fields:
            self._set(Status.READY)
        # else: a 5xx without the runtime's JSON is the platform's own page (a crashing
        # container, a gateway timeout): it says nothing about the function's state.

    def _give_up(self, problem: str) -> None:
        with self._lock:
            warming = self._status is Status.WARMING
        if warming:  # it never came up within the time given
            self._set(Status.FAILED, f"no answer from the upstream in time: {problem}")

    # -- waking ------------------------------------------------------------------------------

    def wake(self, setup_body: bytes, label_config: str | None, headers: Mapping[str, str]) -> bool:
        """Start the upstream in the background (Label Studio sends a batch right after
        /setup): /health until it is up, then /setup with this body to learn the version it
        gives this label config. At most one wake-up runs, and none while the upstream answered
        within the last WAKE_INTERVAL seconds (Label Studio sends /setup whenever its model
        settings are looked at); False when none was started."""
        with self._lock:
            recent = self._last_answer is not None and time.monotonic() - self._last_answer < WAKE_INTERVAL
            if self._waking or (recent and self._status is Status.READY):
                return False
            self._waking = True
        try:
            args = (setup_body, label_config, dict(headers))
            threading.Thread(target=self._wake, args=args, name="lsfn-wake", daemon=True).start()
        except RuntimeError:  # no thread to be had: the next /setup tries again
            with self._lock:
                self._waking = False
            return False
        return True

    def _wake(self, setup_body: bytes, label_config: str | None, headers: dict[str, str]) -> None:
        try:
            until = time.monotonic() + self.settings.upstream_timeout
            health = self.call("GET", "/health", None, headers, until, "health")
            if health.status != 200:
                self.wakeups.labels("failed").inc()
                return
            self.wakeups.labels("ready").inc()
            answer = self.call("POST", "/setup", setup_body, {**headers, "Content-Type": "application/json"}, until, "setup")
            self._learn_version(label_config, answer)
        except Unreachable as exc:
            self.wakeups.labels("unreachable").inc()
            logger.warning("upstream did not wake", extra={"detail": str(exc)})
        except Exception:  # noqa: BLE001 - a wake-up is best effort; the next /predict retries anyway
            self.wakeups.labels("error").inc()
            logger.exception("waking the upstream failed")
        finally:
            with self._lock:
                self._waking = False

    def _learn_version(self, label_config: str | None, answer: Answer) -> None:
        if answer.status != 200:
            return
        try:
            version = json.loads(answer.body).get("model_version")
        except (ValueError, AttributeError, RecursionError):
            return
        if isinstance(version, str):
            key = config_key(label_config)
            with self._lock:
                self._versions[key] = version
                self._versions.move_to_end(key)
                while len(self._versions) > _KNOWN_CONFIGS:
                    self._versions.popitem(last=False)

    def refresh_versions(self, headers: Mapping[str, str]) -> list[str] | None:
        """The upstream's /versions when it is warm (answered within a second or two), else
        None; a warm answer is remembered."""
        if self.status()[0] is not Status.READY:
            return None
        try:
            answer = self.call("GET", "/versions", None, headers, time.monotonic() + 2.0, "versions")
            listed = json.loads(answer.body).get("versions") if answer.status == 200 else None
        except (Unreachable, ValueError, AttributeError):
            return None
        if isinstance(listed, list) and all(isinstance(v, str) for v in listed):
            self._listed = listed
            return listed
        return None
