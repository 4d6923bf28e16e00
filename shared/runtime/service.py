"""The request cycle every lsfn server shares: routing, auth, body limits, JSON errors, request
ids, timing, logs and metrics. ``Runtime`` (shared/runtime/app.py, a function with its model)
and ``FrontDoor`` (shared/runtime/front_door.py, no model) fill in the same routes.

Routing is ours rather than Flask's: functions-framework hands every path to one target, so
one code path serves whichever server is in front.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from lsfn.shared.headers import DEADLINE_HEADER, WEBHOOK_SECRET_HEADER
from lsfn.shared.label_config import LabelConfig, parse_label_config
from lsfn.shared.protocol import PredictRequest, WebhookEvent, parse_predict, parse_setup, parse_webhook
from lsfn.shared.runtime.errors import HTTPError, client_error
from lsfn.shared.runtime.logs import logger
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Spec
from lsfn.shared.runtime.telemetry import Timing
from lsfn.shared.runtime.train_trigger import TrainBusy, TrainTrigger
from lsfn.shared.runtime.trained import trained_serving
from lsfn.shared.settings import Settings

__all__ = ["ACTIONS", "DEADLINE_HEADER", "WEBHOOK_SECRET_HEADER", "Call", "Route", "Service", "flask_app", "json_response", "wsgi_app"]

_WWW_AUTHENTICATE = 'Basic realm="lsfn", charset="UTF-8"'
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Parsing JSON takes about twenty times the body in memory: bodies above this size are parsed
# a few at a time, so a burst of large ones cannot take the instance's memory.
_LARGE_BODY = 1 << 20
_LARGE_BODIES_AT_ONCE = 2
_DRAIN_BYTES = 64 << 20  # how much of an oversized body is read and dropped before the 413
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Events Label Studio sends (PROTOCOL.md §5): anything else is counted as "other" so a client
# cannot grow the metric's label set.
ACTIONS = frozenset(
    {
        "TASKS_CREATED", "TASKS_DELETED", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING", "PROJECT_CREATED",
        "PROJECT_UPDATED", "PROJECT_DELETED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED",
        "LABEL_LINK_DELETED",
    }
)  # fmt: skip


@dataclass
class Call:
    """One request as a handler sees it."""

    request: Request
    body: Any
    raw: bytes  # the body as received (forwarded verbatim by the front door)
    request_id: str
    timing: Timing
    authorized: bool
    started: float  # time.monotonic() when the request arrived

    @property
    def body_bytes(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class Route:
    name: str
    methods: frozenset[str]
    handler: Callable[[Call], Response]
    public: bool = False  # answered without auth (/ and /health: probes and Label Studio's check)
    reads_json: bool = False


def _discard(stream: Any, budget: int) -> None:
    while budget > 0 and (chunk := stream.read(min(1 << 20, budget))):
        budget -= len(chunk)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(data, status=status, headers=headers, mimetype="application/json")


def _read_image_info(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("image info unreadable", extra={"path": str(path), "detail": str(exc)[:300]})
        return None


class Service:
    """A server for Label Studio's routes around a ``Spec``: /setup and /webhook are the same
    everywhere; subclasses answer /health, /versions and /predict and say where webhook events go."""

    def __init__(self, settings: Settings, metrics: Metrics, spec: Spec, trained_files: bool = False) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spec = spec
        # The trained versions projects are served with (WEIGHTS_STORE), their files fetched
        # where the model runs; None without a store.
        self.trained = trained_serving(settings, spec.function_name, trained_files)
        # Training jobs started by webhooks (a subclass that can start them sets it).
        self.trainer: TrainTrigger | None = None
        self._large_bodies = threading.BoundedSemaphore(_LARGE_BODIES_AT_ONCE)
        self._image = _read_image_info(settings.image_info)
        if self.settings.webhook_secret and self.settings.basic_auth is None:
            logger.warning("WEBHOOK_SECRET is set without BASIC_AUTH_USER/BASIC_AUTH_PASS: only /webhook is protected")
        get, post = frozenset({"GET", "HEAD"}), frozenset({"POST"})
        self.routes = {
            "/": Route("health", get, self.health, public=True),
            "/health": Route("health", get, self.health, public=True),
            "/setup": Route("setup", post, self.setup, reads_json=True),
            "/versions": Route("versions", get, self.versions),
            "/predict": Route("predict", post, self.predict, reads_json=True),
            "/webhook": Route("webhook", post, self.webhook, reads_json=True),
            "/metrics": Route("metrics", get, self.metrics_route),
        }

    def on_request(self) -> None:
        """Called first for every request (cheap)."""

    def image_detail(self, call: Call) -> dict[str, Any]:
        """What the image holds (torch build, weights), for /health: only to authenticated
        callers, like every detail naming what is inside the image."""
        return {"image": self._image} if self._image is not None and call.authorized else {}

    def health(self, call: Call) -> Response:
        raise NotImplementedError

    def versions(self, call: Call) -> Response:
        raise NotImplementedError

    def predict(self, call: Call) -> Response:
        raise NotImplementedError

    def enqueue_webhook(self, call: Call, event: WebhookEvent, job: str) -> bool:
        """Hand a webhook event on in the background; False when the queue is full."""
        raise NotImplementedError

    def metrics_route(self, call: Call) -> Response:
        return Response(self.metrics.exposition(), status=200, content_type=self.metrics.content_type)

    def setup(self, call: Call) -> Response:
        request = parse_setup(call.body)
        config = parse_label_config(request.label_config) if request.label_config else None
        if config is not None:
            self.spec.check_label_config(config)
        self.on_setup(call)
        served = self.trained.current(request.project_id) if self.trained is not None else None
        version = served.name if served is not None else self.setup_version(request.label_config, config)
        return json_response(200, {"model_version": version})

    def on_setup(self, call: Call) -> None:
        """Called by /setup once the label config passed the check (the front door wakes its
        upstream)."""

    def setup_version(self, label_config: str | None, config: LabelConfig | None) -> str:
        """The model version /setup answers for a label config."""
        return self.spec.version_for(config)

    def webhook(self, call: Call) -> Response:
        event = parse_webhook(call.body)
        action = event.action if event.action in ACTIONS else "other"
        if self.trainer is not None and event.project_id is not None:
            started = None
            if event.action == "START_TRAINING":
                try:
                    started = self.trainer.start(event.project_id)
                except TrainBusy as busy:
                    self.metrics.webhooks.labels(action, "busy").inc()
                    return json_response(200, {"status": "busy", "job": busy.running.id, "detail": str(busy)})
            elif event.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
                started = self.trainer.annotated(event.project_id)
            if started is not None:
                job, new = started
                self.metrics.webhooks.labels(action, "training" if new else "coalesced").inc()
                return json_response(200, {"status": "training" if new else "running", "job": job.id})
        if event.action == "START_TRAINING" and self.trainer is None and not self.spec.trains:
            self.metrics.webhooks.labels(action, "ignored").inc()
            return json_response(200, {"status": "ignored", "detail": self.training_unavailable()})
        if not self.spec.trains:
            self.metrics.webhooks.labels(action, "ignored").inc()
            return json_response(200, {"status": "ignored", "detail": f"{self.spec.model_class} does not train"})
        job = uuid.uuid4().hex
        if not self.enqueue_webhook(call, event, job):
            self.metrics.webhooks.labels(action, "refused").inc()
            raise HTTPError(503, "webhook queue full", "events arrive faster than they are handled", {"Retry-After": "5"})
        self.metrics.webhooks.labels(action, "queued").inc()
        return json_response(200, {"status": "queued", "job": job})

    def training_unavailable(self) -> str:
        """Why "Start Training" starts nothing here."""
        return f"{self.spec.model_class} does not train here (it needs WEIGHTS_STORE, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"

    def trained_versions(self) -> list[str]:
        """The trained versions /versions lists beside the function's own."""
        return self.trained.listed() if self.trained is not None else []

    def predict_request(self, call: Call) -> tuple[PredictRequest, LabelConfig]:
        """A /predict body parsed, its label config checked against the spec."""
        request = parse_predict(call.body)
        if not request.label_config:
            raise HTTPError(422, "invalid request", "label_config: the project's label config is missing")
        config = parse_label_config(request.label_config)
        self.spec.check_label_config(config)
        return request, config

    def deadline(self, call: Call) -> float:
        """When a /predict must be answered (time.monotonic()): PREDICT_DEADLINE after it arrived,
        or sooner when the caller says so (the front door passes what is left of its own)."""
        budget = self.settings.predict_deadline
        given = call.request.headers.get(DEADLINE_HEADER, "")
        try:
            if given and 0 <= float(given) < budget:
                budget = float(given)
        except ValueError:
            pass  # a malformed header is ignored, like a missing one
        return call.started + budget

    def admit_until(self, call: Call, deadline: float) -> float:
        """How long a /predict may wait for a slot (ADMIT_TIMEOUT, within its deadline)."""
        return min(deadline, call.started + self.settings.admit_timeout)

    # -- the request cycle ------------------------------------------------------------------

    def call(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """One request answered in this process without HTTP, exactly as ``handle`` answers it
        over HTTP: (status, body, headers). Modal's GPU class answers its front door this way."""
        environ = EnvironBuilder(path=path, method=method, data=body or b"", headers=dict(headers)).get_environ()
        response = self.handle(Request(environ))
        return response.status_code, response.get_data(), dict(response.headers)

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        arrived = time.monotonic()
        request_id = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(8).hex()
        self.on_request()
        path = request.path.rstrip("/") or "/"
        route = self.routes.get(path)
        route_name = route.name if route else "unknown"
        timing = Timing()
        try:
            authorized = self._authorize(route, request)
            if route is None:
                raise HTTPError(404, "not found", f"no route {path[:200]!r}; routes: {', '.join(self.routes)}")
            if request.method not in route.methods:
                allowed = ", ".join(sorted(route.methods))
                raise HTTPError(405, "method not allowed", f"{path} accepts {allowed}", {"Allow": allowed})
            body, raw = self._read_json(request) if route.reads_json else (None, b"")
            response = route.handler(Call(request, body, raw, request_id, timing, authorized, arrived))
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, never take the process down
            error = client_error(exc)
            if error is None:
                logger.exception("unhandled error", extra={"request_id": request_id, "route": route_name})
                detail = "an unexpected error; the function's log has it under this request id"
                error = HTTPError(500, "internal error", detail)
            response = self._error(error, request_id, route_name)
        elapsed = time.perf_counter() - started
        response.headers["X-Request-Id"] = request_id
        server_timing = timing.header(elapsed)
        if server_timing:
            response.headers["Server-Timing"] = server_timing
        method = request.method if request.method in _KNOWN_METHODS else "other"  # bounded labels
        self.metrics.observe_request(route_name, method, response.status_code, elapsed)
        # Label Studio polls /health often: keep it out of the default log level.
        level = 10 if route_name == "health" and response.status_code < 400 else 20
        logger.log(
            level,
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path[:200],
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response

    def _error(self, exc: HTTPError, request_id: str, route_name: str) -> Response:
        self.metrics.errors.labels(route_name, str(exc.status)).inc()
        body = {"error": exc.error, "detail": exc.detail, "request_id": request_id}
        response = json_response(exc.status, body, exc.headers)
        if exc.status == 413:
            # A streamed response tells functions-framework not to buffer the rest of an
            # oversized body after we answered (it reads the whole body otherwise).
            response.response = iter([response.get_data()])
        return response

    def _authorize(self, route: Route | None, request: Request) -> bool:
        """Raise 401 unless the request may use the route; True when it is authenticated (or
        no auth is configured)."""
        credentials = self.settings.basic_auth
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else ""
        auth = request.authorization
        if credentials is not None and auth is not None and auth.type == "basic":
            user_ok = hmac.compare_digest((auth.username or "").encode(), credentials[0].encode())
            pass_ok = hmac.compare_digest((auth.password or "").encode(), credentials[1].encode())
            if user_ok and pass_ok:
                return True
        if route is not None and route.name == "webhook" and secret:
            # Label Studio's project webhooks cannot send the connection's basic auth, but can
            # send custom headers: a shared secret in one of them is the webhook's credential.
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if given and hmac.compare_digest(given.encode(), secret.encode()):
                return True
            if credentials is None:
                raise HTTPError(401, "unauthorized", f"the webhook needs the {WEBHOOK_SECRET_HEADER} header")
        if credentials is None:
            return True
        if route is not None and route.public:
            return False
        raise HTTPError(
            401, "unauthorized", "basic auth credentials missing or wrong", {"WWW-Authenticate": _WWW_AUTHENTICATE}
        )

    def _read_json(self, request: Request) -> tuple[Any, bytes]:
        """The parsed JSON body and its bytes."""
        mimetype = request.mimetype
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise HTTPError(415, "unsupported media type", f"the body must be application/json, not {mimetype or 'missing'!r}")
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        if request.content_length is None or request.content_length <= limit:
            while chunk := request.stream.read(min(1 << 20, limit + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
        if size > limit or (request.content_length or 0) > limit:
            # Read and drop the rest (up to a bound) before answering: a client that sends its
            # whole body before reading, as Label Studio's does, would otherwise see the
            # connection reset instead of the 413.
            _discard(request.stream, _DRAIN_BYTES)
            raise HTTPError(
                413, "body too large", f"the body is larger than {limit} bytes (MAX_BODY_BYTES)", {"Connection": "close"}
            )
        data = b"".join(chunks)
        try:
            if size <= _LARGE_BODY:
                return json.loads(data), data
            if not self._large_bodies.acquire(timeout=30):
                raise HTTPError(503, "busy", "too many large bodies are being read", {"Retry-After": "2"})
            try:
                return json.loads(data), data
            finally:
                self._large_bodies.release()
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise HTTPError(400, "malformed JSON", str(exc)[:300]) from None


def wsgi_app(service: Service) -> Callable[[dict[str, Any], Any], Any]:
    """A WSGI callable sending every path to ``service.handle``: Flask's own routing and
    contexts would only add time to each request (a third of a /health answer)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return service.handle(Request(environ))(environ, start_response)

    return app


def flask_app(service: Service, name: str) -> flask.Flask:
    """A Flask app (what gunicorn and Modal serve) whose every request goes to ``service``;
    ``app.extensions["lsfn"]`` is the service."""
    app = flask.Flask(name)
    app.wsgi_app = wsgi_app(service)  # type: ignore[method-assign]
    app.extensions["lsfn"] = service
    return app
