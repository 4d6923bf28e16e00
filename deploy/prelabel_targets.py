"""Where `lsfn prelabel` predicts its batches (``FUNCTION_TARGET``):

- ``http(s)://...``: any lsfn function or front door, or any Label Studio ML backend (the same
  protocol), ``--concurrency`` batches at once, with Basic auth;
- ``local:FUNCTION``: the function in this process, through the same request cycle as
  ``lsfn serve`` (``Runtime.call``): no GPU at hand, or a Cloud Run Job's task;
- ``modal:FUNCTION``: the GPU class `lsfn deploy modal` deployed, fanned out with Modal's own
  ``.map`` so that Modal starts containers for the work (``--max-containers`` caps them).

A busy or cold function (429, 503, a refused connection) is tried again with backoff; any other
answer is final for its batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import urllib3

from lsfn.deploy.prelabel import Batch

__all__ = ["HttpTarget", "LocalTarget", "MapTarget", "TargetError", "answer_results", "modal_target", "run_pooled", "send_retrying",
           "target_from"]

RETRIED = frozenset({429, 502, 503, 504})
# A busy function is given this long (per batch) before its batch counts as failed.
RETRY_FOR = 300.0
Send = Callable[[str, bytes, str], tuple[int, bytes, Mapping[str, str]]]


class TargetError(RuntimeError):
    """The target cannot be used (unreachable, refused the label config)."""


def answer_results(status: int, data: bytes) -> list[Any] | Exception:
    """A /predict answer's ``results``, or why there are none."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if status != 200:
        detail = f" ({body.get('error')}: {body.get('detail')})" if isinstance(body, dict) and body.get("error") else ""
        return RuntimeError(f"the function answered {status}{detail}")
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return RuntimeError("the function's answer has no results list")
    return results


def _retry_after(headers: Mapping[str, str], attempt: int) -> float:
    given = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    try:
        return min(max(float(given), 0.1), 30.0) if given else min(1.0 * 2**attempt, 30.0)
    except ValueError:
        return min(1.0 * 2**attempt, 30.0)


def send_retrying(send: Send, path: str, body: bytes, key: str, retry_for: float = RETRY_FOR) -> tuple[int, bytes, Mapping[str, str]]:
    """``send`` until the answer is not a busy or cold one, or ``retry_for`` seconds passed;
    a connection that failed (ConnectionError/OSError) is tried again the same way."""
    until = time.monotonic() + retry_for
    attempt = 0
    while True:
        try:
            status, data, headers = send(path, body, key)
            if status not in RETRIED:
                return status, data, headers
            pause = _retry_after(headers, attempt)
        except (ConnectionError, OSError, urllib3.exceptions.HTTPError):
            if time.monotonic() >= until:
                raise
            status, data, headers = 0, b"", {}
            pause = min(1.0 * 2**attempt, 30.0)
        if time.monotonic() + pause >= until:
            if status:
                return status, data, headers
            raise ConnectionError(f"no answer from the function within {retry_for:g} s")
        time.sleep(pause)
        attempt += 1


def run_pooled(call: Callable[[Batch], list[Any] | Exception], batches: Sequence[Batch], concurrency: int
               ) -> Iterator[tuple[Batch, list[Any] | Exception]]:  # fmt: skip
    """``call`` on each batch, ``concurrency`` at a time, each result as soon as it is there; a
    batch is sent only when one finished (an interrupted run has at most that many in flight)."""

    def guarded(batch: Batch) -> list[Any] | Exception:
        try:
            return call(batch)
        except Exception as exc:  # noqa: BLE001 - one batch's failure is its own
            return exc

    pending = iter(batches)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="lsfn-prelabel")
    try:
        running: dict[Future[list[Any] | Exception], Batch] = {}
        for batch in pending:
            running[pool.submit(guarded, batch)] = batch
            if len(running) >= concurrency:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                batch = running.pop(future)
                following = next(pending, None)
                if following is not None:
                    running[pool.submit(guarded, following)] = following
                yield batch, future.result()
    finally:
        # Interrupted: do not wait for the batches in flight (their answers would be dropped).
        pool.shutdown(wait=False, cancel_futures=True)


def _version(status: int, data: bytes, where: str) -> str:
    if status != 200:
        raise TargetError(f"{where} answered /setup with {status}: {data[:300].decode(errors='replace')}")
    version = json.loads(data).get("model_version")
    if not isinstance(version, str) or not version:
        raise TargetError(f"{where} answered /setup without a model_version")
    return version


class _SendTarget:
    """A target reached through one ``send(path, body, request_id)``."""

    name = "function"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency

    def send(self, path: str, body: bytes, key: str) -> tuple[int, bytes, Mapping[str, str]]:
        raise NotImplementedError

    def setup(self, body: bytes) -> str:
        try:
            return _version(*send_retrying(self.send, "/setup", body, "prelabel-setup")[:2], self.name)
        except (ConnectionError, OSError, urllib3.exceptions.HTTPError) as exc:
            raise TargetError(f"cannot reach {self.name}: {exc}") from None

    def run(self, batches: Sequence[Batch]) -> Iterator[tuple[Batch, list[Any] | Exception]]:
        return run_pooled(lambda batch: answer_results(*send_retrying(self.send, "/predict", batch.body, batch.key)[:2]),
                          batches, self.concurrency)  # fmt: skip


class HttpTarget(_SendTarget):
    def __init__(self, url: str, concurrency: int, basic_auth: tuple[str, str] | None = None, timeout: float = 300.0) -> None:
        super().__init__(concurrency)
        self.url = url.rstrip("/")
        self.name = self.url
        self._headers = urllib3.make_headers(basic_auth=f"{basic_auth[0]}:{basic_auth[1]}") if basic_auth else {}
        self._http = urllib3.PoolManager(maxsize=max(1, concurrency), retries=False, timeout=urllib3.Timeout(connect=10, read=timeout))

    def send(self, path: str, body: bytes, key: str) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {**self._headers, "Content-Type": "application/json", "X-Request-Id": key}
        response = self._http.request("POST", self.url + path, body=body, headers=headers)
        return response.status, response.data, response.headers


class LocalTarget(_SendTarget):
    """The function in this process: its model loads here (DEVICE picks the GPU when there is one)."""

    def __init__(self, function: str, concurrency: int) -> None:
        super().__init__(concurrency)
        from lsfn.shared.cli import function_runtime

        self.name = f"local:{function}"
        self.runtime = function_runtime(function)
        self.runtime.start()

    def send(self, path: str, body: bytes, key: str) -> tuple[int, bytes, Mapping[str, str]]:
        return self.runtime.call("POST", path, body, {"Content-Type": "application/json", "X-Request-Id": key})


class MapTarget:
    """A target that fans batches out itself: Modal's ``.map`` over the GPU class's ``handle``
    (or anything with its interface: ``remote`` and ``map(..., order_outputs=False,
    return_exceptions=True)``). Batches answered busy, cold or not at all go round again."""

    rounds = 3

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name

    def setup(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "X-Request-Id": "prelabel-setup"}
        for attempt in range(20):
            try:
                status, data, answered = self.handle.remote("POST", "/setup", body, headers)
            except Exception as exc:  # noqa: BLE001 - Modal's: not deployed, not logged in, ...
                raise TargetError(f"cannot call {self.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
            if status not in RETRIED:
                return _version(status, data, self.name)
            time.sleep(_retry_after(answered, attempt))
        raise TargetError(f"{self.name} stayed busy for /setup")

    def run(self, batches: Sequence[Batch]) -> Iterator[tuple[Batch, list[Any] | Exception]]:
        pending = list(batches)
        for round_ in range(self.rounds):
            by_key = {batch.key: batch for batch in pending}
            problems: list[BaseException] = []
            retry: list[Batch] = []
            outputs = self.handle.map(
                ["POST"] * len(pending), ["/predict"] * len(pending), [b.body for b in pending],
                [{"Content-Type": "application/json", "X-Request-Id": b.key} for b in pending],
                order_outputs=False, return_exceptions=True,
            )  # fmt: skip
            for output in _guarded(outputs, problems):
                if isinstance(output, BaseException):  # which batch it was is not said
                    problems.append(output)
                    continue
                status, data, headers = output
                batch = by_key.pop({k.lower(): v for k, v in headers.items()}.get("x-request-id", ""), None)
                if batch is None:
                    continue
                if status in RETRIED and round_ + 1 < self.rounds:
                    retry.append(batch)
                else:
                    yield batch, answer_results(status, data)
            unanswered = list(by_key.values())
            if round_ + 1 == self.rounds or not (retry or unanswered):
                reason = f"{type(problems[0]).__name__}: {problems[0]}" if problems else "no answer"
                for batch in unanswered:
                    yield batch, RuntimeError(f"the GPU function failed on this batch ({reason})")
                for batch in retry:
                    yield batch, RuntimeError("the GPU function stayed busy")
                return
            pending = retry + unanswered
            time.sleep(min(2.0 * 2**round_, 30.0))  # busy: give the containers a moment


def _guarded(outputs: Any, problems: list[BaseException]) -> Iterator[Any]:
    """The map's outputs; an error of the map itself (not of one call) ends them, recorded."""
    try:
        yield from outputs
    except Exception as exc:  # noqa: BLE001 - the batches not answered are failed by the caller
        problems.append(exc)


def modal_target(function: str, max_containers: int | None, environment: str | None = None) -> MapTarget:
    """The GPU class of the app `lsfn deploy modal FUNCTION` deployed."""
    try:
        import modal
    except ImportError:
        raise TargetError("modal: targets need Modal's client: pip install 'lsfn[modal]'") from None
    from lsfn.deploy.modal_spec import app_name

    try:
        cls = modal.Cls.from_name(app_name(function), "Function", environment_name=environment)
        if max_containers:
            cls = cls.with_options(max_containers=max_containers)
        return MapTarget(cls().handle, f"modal:{function}")
    except Exception as exc:  # noqa: BLE001 - Modal's: no credentials, the app not deployed
        raise TargetError(f"cannot find {app_name(function)} on Modal ({type(exc).__name__}: {exc}): "
                          f"lsfn deploy modal {function}") from None  # fmt: skip


def target_from(spec: str, concurrency: int, basic_auth: tuple[str, str] | None = None, max_containers: int | None = None,
                modal_environment: str | None = None) -> Any:  # fmt: skip
    """The target a FUNCTION_TARGET names."""
    if spec.startswith(("http://", "https://")):
        return HttpTarget(spec, concurrency, basic_auth)
    kind, _, name = spec.partition(":")
    if kind == "local" and name:
        return LocalTarget(name, concurrency)
    if kind == "modal" and name:
        return modal_target(name, max_containers, modal_environment)
    raise TargetError(f"{spec!r} is not a target: give http(s)://..., local:FUNCTION, modal:FUNCTION or cloudrun-job:FUNCTION")

