"""The HTTP side of a function: routes, auth, limits, errors, timing, metrics.

``create_app(ModelClass)`` gives a Flask (WSGI) app for gunicorn and Modal; ``http_target(app)``
gives the functions-framework entry point, which receives every path and routes inside the
same ``Runtime.handle``. Routing is ours rather than Flask's for that reason: one code path
whichever server is in front.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
from werkzeug.wrappers import Request, Response

from shared.label_config import parse_label_config
from shared.protocol import parse_predict, parse_setup, parse_webhook
from shared.runtime.errors import HTTPError, client_error
from shared.runtime.lifecycle import Loader, State
from shared.runtime.logs import configure_logging, logger
from shared.runtime.metrics import Metrics
from shared.runtime.model import Model
from shared.runtime.predict import Predictor
from shared.runtime.telemetry import Timing
from shared.runtime.training import FitQueue
from shared.settings import Settings, get_settings

__all__ = ["Runtime", "create_app", "http_target"]

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
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
_ACTIONS = frozenset(
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
    body_bytes: int
    request_id: str
    timing: Timing
    authorized: bool


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


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(data, status=status, headers=headers, mimetype="application/json")


class Runtime:
    """One function instance: the model, its loader and everything around a request."""

    def __init__(self, model_class: type[Model], settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        configure_logging(self.settings.log_level)
        self.metrics = Metrics()
        self.model = model_class(self.settings)
        self.loader = Loader(self._load, on_change=lambda state: self.metrics.ready.set(state is State.READY))
        self.predictor = Predictor(self.model, self.settings, self.metrics)
        self.fit_queue = FitQueue(self.model, self.loader, self.metrics)
        limit = self.settings.max_concurrent_predictions
        self._slots = threading.BoundedSemaphore(limit)
        # Batches may take all slots but one: an annotator's click is not refused because
        # "Retrieve predictions" runs in the background.
        self._batch_slots = threading.BoundedSemaphore(max(1, limit - 1))
        self._large_bodies = threading.BoundedSemaphore(_LARGE_BODIES_AT_ONCE)
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

    def _load(self) -> None:
        self.model.setup()
        self.model.warmup()

    def start(self) -> None:
        """Start loading the model in the background (also done by the first request)."""
        self.loader.start()

    # -- the request cycle ------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(8).hex()
        self.loader.start()
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
            body, size = self._read_json(request) if route.reads_json else (None, 0)
            response = route.handler(Call(request, body, size, request_id, timing, authorized))
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
        response = _json(exc.status, body, exc.headers)
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

    def _read_json(self, request: Request) -> tuple[Any, int]:
        """The parsed JSON body and its size in bytes."""
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
                return json.loads(data), size
            if not self._large_bodies.acquire(timeout=30):
                raise HTTPError(503, "busy", "too many large bodies are being read", {"Retry-After": "2"})
            try:
                return json.loads(data), size
            finally:
                self._large_bodies.release()
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise HTTPError(400, "malformed JSON", str(exc)[:300]) from None

    # -- routes ---------------------------------------------------------------------------------

    def health(self, call: Call) -> Response:
        state = self.loader.state
        body: dict[str, Any] = {"model_class": self.model.model_class, "model_version": self.model.model_version}
        if state is State.READY:
            return _json(200, {"status": "UP", **body})
        if state is State.FAILED:
            # The reason may name files inside the image: only authenticated callers see it.
            detail = self.loader.error if call.authorized else "see the function's log"
            return _json(503, {"status": "FAILED", **body, "error": "model failed to load", "detail": detail})
        return _json(
            503,
            {"status": "LOADING", **body, "error": "model is loading", "detail": "setup and warmup are running"},
            {"Retry-After": "2"},
        )

    def setup(self, call: Call) -> Response:
        request = parse_setup(call.body)
        config = parse_label_config(request.label_config) if request.label_config else None
        if config is not None:
            self.model.check_label_config(config)
        return _json(200, {"model_version": self.model.version_for(config)})

    def versions(self, call: Call) -> Response:
        return _json(200, {"versions": self.model.versions(), "model_version": self.model.model_version})

    def metrics_route(self, call: Call) -> Response:
        return Response(self.metrics.exposition(), status=200, content_type=self.metrics.content_type)

    def predict(self, call: Call) -> Response:
        request = parse_predict(call.body)
        if not request.label_config:
            raise HTTPError(422, "invalid request", "label_config: the project's label config is missing")
        config = parse_label_config(request.label_config)
        self.model.check_label_config(config)
        # Beyond the limit answer at once: a growing queue would only turn into timeouts.
        batch = not request.is_interactive
        if batch and not self._batch_slots.acquire(blocking=False):
            raise self._overloaded("batch predictions")
        if not self._slots.acquire(blocking=False):
            if batch:
                self._batch_slots.release()
            raise self._overloaded("predictions")
        try:
            self.metrics.in_flight.inc()
            self._wait_ready()
            body = self.predictor.run(request, config, call.timing, call.request_id)
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()
            if batch:
                self._batch_slots.release()
        return Response(body, status=200, mimetype="application/json")

    def _overloaded(self, what: str) -> HTTPError:
        limit = self.settings.max_concurrent_predictions
        detail = f"all slots for {what} are taken (MAX_CONCURRENT_PREDICTIONS={limit}; one is kept for interactive requests)"
        return HTTPError(503, "overloaded", detail, {"Retry-After": "1"})

    def _wait_ready(self) -> None:
        # A cold start: Label Studio waits up to 100 s for /predict, so wait for the model
        # rather than fail the first request after scaling from zero.
        state = self.loader.wait(self.settings.ready_timeout)
        if state is State.FAILED:
            raise HTTPError(503, "model failed to load", "see /health and the function's log")
        if state is not State.READY:
            raise HTTPError(503, "model is loading", f"not ready after {self.settings.ready_timeout:g} s", {"Retry-After": "5"})

    def webhook(self, call: Call) -> Response:
        event = parse_webhook(call.body)
        action = event.action if event.action in _ACTIONS else "other"
        if not self.model.trains:
            self.metrics.webhooks.labels(action, "ignored").inc()
            return _json(200, {"status": "ignored", "detail": f"{self.model.model_class} does not train"})
        job = uuid.uuid4().hex
        if not self.fit_queue.submit(event, job, call.body_bytes):
            self.metrics.webhooks.labels(action, "refused").inc()
            raise HTTPError(503, "training queue full", "events arrive faster than fit() handles them", {"Retry-After": "5"})
        self.metrics.webhooks.labels(action, "queued").inc()
        return _json(200, {"status": "queued", "job": job})


def create_app(model_class: type[Model], settings: Settings | None = None) -> flask.Flask:
    """The WSGI app serving ``model_class``; ``app.extensions["lsfn"]`` is its Runtime."""
    runtime = Runtime(model_class, settings)
    app = flask.Flask(f"lsfn.{model_class.__name__}")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        # Every path goes to Runtime.handle: Flask's own routing and contexts would only add
        # time to each request (a third of a /health answer).
        return runtime.handle(Request(environ))(environ, start_response)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    app.extensions["lsfn"] = runtime
    return app


def http_target(app: flask.Flask) -> Callable[[Request], Response]:
    """The functions-framework HTTP target for an app made by ``create_app``."""
    runtime: Runtime = app.extensions["lsfn"]

    def handler(request: Request) -> Response:
        return runtime.handle(request)

    # `lsfn serve` serves the app itself and starts loading with the runtime.
    handler.app = app  # type: ignore[attr-defined]
    handler.runtime = runtime  # type: ignore[attr-defined]
    return handler
