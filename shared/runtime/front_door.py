"""The front door: a function's routes, served without its model, in front of the GPU function.

Label Studio gives /health one second and /setup three before every batch, and marks a slow
backend Disconnected; a GPU function that scaled to zero needs far longer to start. So a
deployed function is two pieces: this small CPU server (no torch; ready in well under a
second) answers /health, /setup and /versions itself from the function's ``Spec`` and what it
has seen of the upstream, and forwards /predict and /webhook to the GPU function, waiting
through its cold start. /setup also starts waking the upstream, since a batch follows it.

Auth, body limits, JSON errors, logs and metrics are the function's own (shared/runtime/service.py),
applied before anything is forwarded. The client's ``Authorization`` never reaches the upstream:
the front door's ``Upstream`` adds its own credentials.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
from werkzeug.wrappers import Response

from lsfn.shared.label_config import LabelConfig
from lsfn.shared.protocol import WebhookEvent
from lsfn.shared.runtime.admission import Gate
from lsfn.shared.runtime.background import BoundedWorker
from lsfn.shared.runtime.cloudrun_jobs import cloudrun_job_starter
from lsfn.shared.runtime.errors import HTTPError
from lsfn.shared.runtime.logs import configure_logging, logger
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Spec
from lsfn.shared.runtime.predict import deadline_error, encode_results, error_item
from lsfn.shared.runtime.service import Call, Service, flask_app, json_response
from lsfn.shared.runtime.id_token import GoogleIdToken
from lsfn.shared.runtime.train_trigger import TrainTrigger, remote_launcher
from lsfn.shared.runtime.upstream import Answer, HttpUpstream, Unreachable, Upstream
from lsfn.shared.runtime.upstream_link import Status, UpstreamLink
from lsfn.shared.settings import Settings, get_settings
from lsfn.shared.weights import content_hash

__all__ = ["FrontDoor", "create_front_door"]

_PASSED_HEADERS = ("Content-Type", "Retry-After")


def _answer_problem(answer: Answer) -> str:
    """What went wrong in a failed upstream answer, in a line."""
    try:
        body = json.loads(answer.body)
        detail = f"{body.get('error')}: {body.get('detail')}" if isinstance(body, dict) else ""
    except (ValueError, RecursionError):
        detail = ""
    return f"upstream answered {answer.status}" + (f" ({detail[:300]})" if detail else "")


class FrontDoor(Service):
    def __init__(self, spec_class: type[Spec], upstream: Upstream | None = None, settings: Settings | None = None,
                 trainer: TrainTrigger | None = None) -> None:  # fmt: skip
        settings = settings or get_settings()
        configure_logging(settings.log_level)
        super().__init__(settings, Metrics(model=False), spec_class(settings))
        # "Start Training" starts a job on the platform (a Modal function, a Cloud Run Job).
        if trainer is None and settings.train_job:
            function = os.environ.get("LSFN_FUNCTION") or self.spec.function_name
            start = cloudrun_job_starter(settings.train_job, function, settings.cloud_run_api)
            trainer = TrainTrigger(remote_launcher(start, "cloud run job"), settings.train_every_n_annotations)
        self.trainer = trainer
        if upstream is None:
            if not settings.upstream_url:
                raise ValueError("the front door needs an upstream: set UPSTREAM_URL or pass --upstream")
            connections = settings.upstream_max_requests * settings.upstream_concurrency
            token = GoogleIdToken(settings.upstream_url) if settings.upstream_auth == "google-id-token" else None
            upstream = HttpUpstream(settings.upstream_url, token=token, connections=connections)
        self.link = UpstreamLink(upstream, settings, self.metrics.registry)
        self._gate = Gate(settings.upstream_max_requests, settings.admit_queue, "forwarded predictions (UPSTREAM_MAX_REQUESTS)",
                          self.metrics.waiting.labels("forwarded"))  # fmt: skip
        # Threads are created as chunks need them, none before the server forks its worker.
        self._chunks = ThreadPoolExecutor(
            max_workers=settings.upstream_max_requests * settings.upstream_concurrency, thread_name_prefix="lsfn-chunk"
        )
        self._webhooks: BoundedWorker[tuple[bytes, str]] = BoundedWorker(self._relay_webhook, "lsfn-webhooks")
        self._started = threading.Lock()

    def start(self) -> None:
        """Read the content hashes of the weights the function names (behind its model version)
        in the background, once, so the first /setup answers within Label Studio's 3 s."""
        if not self._started.acquire(blocking=False):
            return

        def warm() -> None:
            try:
                for path in self.spec.weight_files(None):
                    if path.is_file():  # one only a manifest lists has its hash already
                        content_hash(path)
            except (OSError, ValueError) as exc:  # WeightsError: /setup will say it
                logger.warning("weights not readable", extra={"detail": str(exc)[:300]})

        threading.Thread(target=warm, name="lsfn-warm", daemon=True).start()

    def on_request(self) -> None:
        self.start()

    # -- answered here ---------------------------------------------------------------------------

    def health(self, call: Call) -> Response:
        state, reason, age = self.link.status()
        upstream: dict[str, Any] = {"state": state.value}
        if age is not None:
            upstream["last_answer_seconds_ago"] = round(age, 1)
        if state is Status.FAILED:
            # The reason may name files inside the GPU function's image.
            upstream["detail"] = reason if call.authorized else "see the front door's log or ask with credentials"
        body = {"status": "UP", "model_class": self.spec.model_class, "model_version": self.spec.model_version,
                "role": "front door", "upstream": upstream, **self.image_detail(call)}  # fmt: skip
        return json_response(200, body)

    def on_setup(self, call: Call) -> None:
        # Label Studio sends a batch right after /setup: start the upstream now.
        if self.link.wake(call.raw, call.body.get("schema"), {"X-Request-Id": call.request_id}):
            logger.info("waking the upstream", extra={"request_id": call.request_id})

    def setup_version(self, label_config: str | None, config: LabelConfig | None) -> str:
        # What the upstream answered for this config is what it stamps on predictions.
        return self.link.version_for(label_config) or self.spec.version_for(config)

    def versions(self, call: Call) -> Response:
        headers = {"X-Request-Id": call.request_id}
        listed = self.link.refresh_versions(headers) or self.link.listed_versions() or [*self.spec.versions(), *self.trained_versions()]
        return json_response(200, {"versions": listed, "model_version": listed[0] if listed else self.spec.model_version})

    # -- forwarded -------------------------------------------------------------------------------

    def enqueue_webhook(self, call: Call, event: WebhookEvent, job: str) -> bool:
        return self._webhooks.submit((call.raw, job), call.body_bytes)

    def _relay_webhook(self, item: tuple[bytes, str]) -> None:
        raw, job = item
        headers = {"Content-Type": "application/json", "X-Request-Id": job}
        try:
            answer = self.link.call("POST", "/webhook", raw, headers, time.monotonic() + self.settings.upstream_timeout, "webhook")
        except Unreachable as exc:
            logger.error("webhook not delivered to the upstream", extra={"job": job, "detail": str(exc)})
            return
        level = 20 if answer.status < 400 else 40
        logger.log(level, "webhook delivered to the upstream", extra={"job": job, "status": answer.status})

    def predict(self, call: Call) -> Response:
        request, _ = self.predict_request(call)
        deadline = self.deadline(call)
        self._gate.enter(self.admit_until(call, deadline))
        try:
            with call.timing.phase("upstream"):
                tasks: list[Any] = call.body["tasks"]
                size = self.settings.upstream_chunk_tasks
                if request.is_interactive or len(tasks) <= size:
                    return self._forward_whole(call, len(tasks), request.is_interactive, deadline)
                chunks = [tasks[start : start + size] for start in range(0, len(tasks), size)]
                return self._forward_chunks(call, chunks, deadline)
        finally:
            self._gate.leave()

    def _send(self, call: Call, body: bytes, deadline: float) -> Answer:
        headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
        return self.link.call("POST", "/predict", body, headers, deadline, "predict", pass_deadline=True)

    def _forward_whole(self, call: Call, count: int, interactive: bool, deadline: float) -> Response:
        """One request upstream, its answer returned as the upstream gave it."""
        try:
            answer = self._send(call, call.raw, deadline)
        except Unreachable as exc:
            if interactive:
                late = deadline_error(self.settings.predict_deadline)
                raise HTTPError(late.status, late.error, f"{late.detail}: {exc}", late.headers) from None
            return Response(encode_results(self._late(count, str(exc))), status=200, mimetype="application/json")
        headers = {k: answer.headers[k] for k in _PASSED_HEADERS if k in answer.headers}
        mimetype = None if "Content-Type" in headers else "application/json"
        return Response(answer.body, status=answer.status, headers=headers, mimetype=mimetype)

    def _forward_chunks(self, call: Call, chunks: list[list[Any]], deadline: float) -> Response:
        """Chunks sent concurrently (UPSTREAM_CONCURRENCY at a time, in order), answers
        reassembled in task order; a chunk that fails fails only its own tasks."""
        answers: list[list[str]] = [[] for _ in chunks]
        pending = iter(range(len(chunks)))
        lock = threading.Lock()
        took = [0.0]  # the last chunk's time: a chunk that would not come back in time is not sent

        def worker() -> None:
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                started = time.monotonic()
                if started + took[0] >= deadline:
                    answers[index] = self._late(len(chunks[index]))
                    continue
                answers[index] = self._chunk(call, chunks[index], deadline)
                took[0] = time.monotonic() - started

        workers = [self._chunks.submit(worker) for _ in range(min(self.settings.upstream_concurrency, len(chunks)))]
        for future in workers:
            future.result()  # _chunk never raises: every chunk has its items when this returns
        return Response(encode_results([item for answer in answers for item in answer]), status=200, mimetype="application/json")

    def _chunk(self, call: Call, tasks: list[Any], deadline: float) -> list[str]:
        """A chunk's encoded result items, or its error items."""
        try:
            answer = self._send(call, json.dumps({**call.body, "tasks": tasks}, separators=(",", ":")).encode(), deadline)
            if answer.status != 200:
                problem = _answer_problem(answer)
            else:
                body = json.loads(answer.body)
                results = body.get("results") if isinstance(body, dict) else None
                if isinstance(results, list) and len(results) == len(tasks):
                    return [json.dumps(item, separators=(",", ":")) for item in results]
                problem = f"upstream answered 200 without one result per task ({len(tasks)})"
        except Unreachable as exc:
            return self._late(len(tasks), str(exc))
        except Exception:  # noqa: BLE001 - one chunk's failure must not sink the batch
            logger.exception("chunk failed", extra={"request_id": call.request_id, "tasks": len(tasks)})
            problem = f"the front door failed on this chunk (request {call.request_id})"
        logger.warning("chunk failed upstream", extra={"request_id": call.request_id, "tasks": len(tasks), "detail": problem})
        return [error_item(problem)] * len(tasks)

    def _late(self, count: int, because: str = "") -> list[str]:
        """The error items of ``count`` tasks not predicted before the deadline."""
        return [error_item(deadline_error(self.settings.predict_deadline), because)] * count


def create_front_door(spec_class: type[Spec], upstream: Upstream | None = None, settings: Settings | None = None,
                      trainer: TrainTrigger | None = None) -> flask.Flask:  # fmt: skip
    """The WSGI app of a front door for the function ``spec_class`` describes, calling
    ``upstream`` (by default UPSTREAM_URL over HTTP), starting training jobs with ``trainer``;
    ``app.extensions["lsfn"]`` is the FrontDoor."""
    return flask_app(FrontDoor(spec_class, upstream, settings, trainer), f"lsfn.front-door.{spec_class.__name__}")
