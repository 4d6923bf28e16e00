"""A function's server: its model, the loader that sets it up in the background, and the
handlers of Label Studio's routes around it (the request cycle is shared/runtime/service.py).

``create_app(ModelClass)`` gives a Flask (WSGI) app for gunicorn and Modal; ``http_target(app)``
gives the functions-framework entry point, which receives every path and routes inside the
same ``Runtime.handle``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.wrappers import Request, Response

from lsfn.shared.protocol import WebhookEvent
from lsfn.shared.runtime.admission import Gate
from lsfn.shared.runtime.errors import HTTPError
from lsfn.shared.runtime.lifecycle import Loader, State
from lsfn.shared.runtime.logs import configure_logging, logger
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Model
from lsfn.shared.runtime.predict import Predictor
from lsfn.shared.runtime.service import Call, Service, flask_app, json_response, wsgi_app
from lsfn.shared.runtime.train_trigger import TrainTrigger, local_launcher
from lsfn.shared.runtime.training import FitQueue
from lsfn.shared.settings import Settings, get_settings

__all__ = ["Runtime", "create_app", "http_target", "wsgi_app"]


class Runtime(Service):
    """One function instance: the model, its loader and everything around a request."""

    def __init__(self, model_class: type[Model], settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        configure_logging(settings.log_level)
        self.model = model_class(settings)
        super().__init__(settings, Metrics(), self.model, trained_files=True)
        self.loader = Loader(self._load, on_change=lambda state: self.metrics.ready.set(state is State.READY))
        self.predictor = Predictor(self.model, self.settings, self.metrics)
        self._on_cpu = False  # set up by preload_on_cpu: loading moves it instead
        self.fit_queue = FitQueue(self.model, self.loader, self.metrics)
        self.trainer = self._trainer()
        limit, queue = self.settings.max_concurrent_predictions, self.settings.admit_queue
        waiting = self.metrics.waiting
        self._gate = Gate(limit, queue, "predictions (MAX_CONCURRENT_PREDICTIONS)", waiting.labels("predictions"))
        # Batches may take all slots but one: an annotator's click is not kept waiting because
        # "Retrieve predictions" runs in the background.
        self._batch_gate = Gate(max(1, limit - 1), queue, "batch predictions (one slot is kept for interactive ones)",
                                waiting.labels("batch"))  # fmt: skip

    def _trainer(self) -> TrainTrigger | None:
        """Training jobs of this function, as child processes, when it trains and has a store
        and Label Studio to train from."""
        settings = self.settings
        if not (self.model.can_train() and settings.weights_store and settings.label_studio_url and settings.label_studio_api_key):
            return None
        return TrainTrigger(local_launcher(model_target(type(self.model))), settings.train_every_n_annotations)

    def preload_on_cpu(self) -> None:
        """Set the model up on the CPU now, before anything is served (Modal snapshots the
        container's memory after this, where no GPU is attached); loading then moves it to
        DEVICE and warms it up, or sets it up again on DEVICE where the function cannot move it."""
        self.model.settings = self.settings.model_copy(update={"device": "cpu"})
        try:
            self.model.setup()
        except Exception:  # noqa: BLE001 - loading sets it up again and /health reports the error
            logger.exception("set-up on the CPU failed; loading tries again on DEVICE")
            return
        finally:
            self.model.settings = self.settings
        self._on_cpu = True

    def _load(self) -> None:
        if not (self._on_cpu and self._moved()):
            self.model.setup()
        self.model.warmup()

    def _moved(self) -> bool:
        try:
            return self.model.move_to(self.settings.device)
        except Exception:  # noqa: BLE001 - set up again on DEVICE: that reports its own error
            logger.exception("moving the model set up on the CPU failed; setting it up again")
            return False

    def start(self) -> None:
        """Start loading the model in the background (also done by the first request)."""
        self.loader.start()

    def on_request(self) -> None:
        self.loader.start()

    # -- routes ---------------------------------------------------------------------------------

    def health(self, call: Call) -> Response:
        state = self.loader.state
        body: dict[str, Any] = {"model_class": self.model.model_class, "model_version": self.model.model_version,
                                **self.image_detail(call)}  # fmt: skip
        if state is State.READY:
            return json_response(200, {"status": "UP", **body})
        if state is State.FAILED:
            # The reason may name files inside the image: only authenticated callers see it.
            detail = self.loader.error if call.authorized else "see the function's log"
            return json_response(503, {"status": "FAILED", **body, "error": "model failed to load", "detail": detail})
        return json_response(
            503,
            {"status": "LOADING", **body, "error": "model is loading", "detail": "setup and warmup are running"},
            {"Retry-After": "2"},
        )

    def versions(self, call: Call) -> Response:
        versions = [*self.model.versions(), *self.trained_versions()]
        return json_response(200, {"versions": versions, "model_version": self.model.model_version})

    def predict(self, call: Call) -> Response:
        request, config = self.predict_request(call)
        deadline = self.deadline(call)
        admit_until = self.admit_until(call, deadline)
        gates = [self._gate] if request.is_interactive else [self._batch_gate, self._gate]
        entered: list[Gate] = []
        try:
            for gate in gates:
                gate.enter(admit_until)
                entered.append(gate)
            self.metrics.in_flight.inc()
            try:
                self._wait_ready(deadline)
                served = self.trained.current(request.project_id) if self.trained is not None else None
                body = self.predictor.run(request, config, call.timing, call.request_id, deadline, served)
            finally:
                self.metrics.in_flight.dec()
        finally:
            for gate in reversed(entered):
                gate.leave()
        return Response(body, status=200, mimetype="application/json")

    def _wait_ready(self, deadline: float) -> None:
        # A cold start: Label Studio waits up to 100 s for /predict, so wait for the model
        # rather than fail the first request after scaling from zero.
        timeout = min(self.settings.ready_timeout, max(0.0, deadline - time.monotonic()))
        state = self.loader.wait(timeout)
        if state is State.FAILED:
            raise HTTPError(503, "model failed to load", "see /health and the function's log")
        if state is not State.READY:
            raise HTTPError(503, "model is loading", f"not ready after {timeout:g} s", {"Retry-After": "5"})

    def enqueue_webhook(self, call: Call, event: WebhookEvent, job: str) -> bool:
        return self.fit_queue.submit(event, job, call.body_bytes)


def create_app(model_class: type[Model], settings: Settings | None = None) -> flask.Flask:
    """The WSGI app serving ``model_class``; ``app.extensions["lsfn"]`` is its Runtime."""
    return flask_app(Runtime(model_class, settings), f"lsfn.{model_class.__name__}")


def http_target(app: flask.Flask) -> Callable[[Request], Response]:
    """The functions-framework HTTP target for an app made by ``create_app``."""
    runtime: Runtime = app.extensions["lsfn"]

    def handler(request: Request) -> Response:
        return runtime.handle(request)

    # `lsfn serve` serves the app itself and starts loading with the runtime.
    handler.app = app  # type: ignore[attr-defined]
    handler.runtime = runtime  # type: ignore[attr-defined]
    return handler


def model_target(model_class: type[Model]) -> str:
    """``path/to/module.py:Class`` of a model class, as `lsfn serve|train` take it."""
    module = sys.modules[model_class.__module__]
    return f"{module.__file__}:{model_class.__name__}"
