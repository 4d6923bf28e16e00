"""/predict from parsed request to encoded answer: fetch, decode, predict, encode.

Exactly one item per task, in task order (fewer make Label Studio re-send every task one by
one). A task that fails gets an item without ``result`` (Label Studio stores nothing and a
later run retries it); the others are answered. A failing interactive request (one task, a
context) is an HTTP error instead: the annotator sees its status line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from lsfn.shared.image_decode import DecodedImage, decode_image
from lsfn.shared.images import ImageFetcher
from lsfn.shared.label_config import LabelConfig, LabelConfigError, ObjectTag
from lsfn.shared.protocol import PredictRequest, ProtocolError, Task, TaskFailure, predict_response
from lsfn.shared.runtime.errors import HTTPError, TaskError, client_error
from lsfn.shared.runtime.logs import logger
from lsfn.shared.runtime.metrics import Metrics
from lsfn.shared.runtime.model import Batch, ImageSource, Model, Prediction, TaskInput, task_value
from lsfn.shared.runtime.telemetry import Telemetry, Timing
from lsfn.shared.runtime.trained import Served
from lsfn.shared.settings import Settings
from lsfn.shared.weights import WeightsError

__all__ = ["CHUNK_TASKS", "Predictor", "deadline_error", "encode_results", "error_item"]

# Tasks fetched, decoded and predicted together; a batch larger than this goes in chunks.
CHUNK_TASKS = 8


def _json_default(value: Any) -> Any:
    # Model code hands back numpy scalars and arrays more often than not.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(item: Any) -> str:
    return json.dumps(item, separators=(",", ":"), allow_nan=False, default=_json_default)


def _versioned(item: dict[str, Any] | list[dict[str, Any]], version: str) -> dict[str, Any] | list[dict[str, Any]]:
    if isinstance(item, list):
        return [p if "model_version" in p else {**p, "model_version": version} for p in item]
    return item if "model_version" in item else {**item, "model_version": version}


def _check_item(item: Any) -> Prediction:
    if isinstance(item, TaskFailure):
        return item
    if isinstance(item, dict) and isinstance(item.get("result"), list):
        return item
    if isinstance(item, list) and item and all(isinstance(p, dict) and isinstance(p.get("result"), list) for p in item):
        return item
    raise TypeError(f"predict returned {type(item).__name__} for a task, not a prediction with a result list")


@dataclass
class _TaskState:
    """One task of a chunk on its way to its answer: the images it wants, fetched, then decoded
    or the error that fails it, then its prediction."""

    task: Task
    wanted: dict[str, str] = field(default_factory=dict)  # object name -> data value to fetch
    fetched: dict[str, bytes | Exception] = field(default_factory=dict)  # the bytes, or why not
    decoded: dict[str, DecodedImage | BaseException] = field(default_factory=dict)  # of the bytes fetched
    images: dict[str, DecodedImage] = field(default_factory=dict)  # what the model gets, none failing
    error: HTTPError | None = None  # what fails the task before the model sees it
    prediction: Prediction | HTTPError | None = None

    @property
    def answer(self) -> Prediction | HTTPError:
        if self.error is not None:
            return self.error
        if self.prediction is None:
            raise RuntimeError(f"task {self.task.id} was neither failed nor predicted")
        return self.prediction


@dataclass(frozen=True)
class _Chunk:
    tasks: list[_TaskState]  # in task order
    timing: Timing  # the fetch phase


def error_item(error: HTTPError | str, because: str = "") -> str:
    """A failed task's item, encoded: no ``result``, so Label Studio stores nothing for it.
    ``because`` adds what led to the error."""
    message = f"{error.error}: {error.detail}" if isinstance(error, HTTPError) else error
    return _encode(predict_response([TaskFailure(f"{message}: {because}" if because else message)])["results"][0])


def encode_results(items: Sequence[str]) -> bytes:
    """The /predict answer from items already encoded, in task order."""
    return ('{"results":[' + ",".join(items) + "]}").encode()


def deadline_error(budget: float) -> HTTPError:
    """The error item of a task that could not be predicted before the /predict deadline (a
    later run of "Retrieve predictions" sends it again: Label Studio stores nothing for it)."""
    return HTTPError(503, "deadline", f"not predicted before the deadline (PREDICT_DEADLINE={budget:g} s)", {"Retry-After": "1"})


def _task_value(task: Task, obj: ObjectTag) -> str:
    """``task_value``, its TaskError as the 422 answered for that task."""
    try:
        return task_value(task, obj)
    except TaskError as exc:
        raise HTTPError(422, "invalid task", str(exc)) from None


def _credentials(request: PredictRequest) -> tuple[str, str] | None:
    """The project's task-data login (basic auth for its non-Label-Studio URLs), if set."""
    params = request.params
    return (params.login, params.password) if params.login and params.password else None


class Predictor:
    def __init__(self, model: Model, settings: Settings, metrics: Metrics) -> None:
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.fetcher = ImageFetcher(settings, on_cache=metrics.cache_lookup)
        # Pillow and numpy release the GIL while decoding: a batch decodes in parallel.
        self._prefetch = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lsfn-prefetch")
        self._decode_pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="lsfn-decode")

    def run(
        self, request: PredictRequest, config: LabelConfig, timing: Timing, request_id: str, deadline: float | None = None,
        served: Served | None = None,
    ) -> bytes:
        """The encoded /predict answer; raises HTTPError for a failing interactive request.
        ``served``: the trained version the project is served with (its name on the predictions,
        its folder given to the model), None for the function's own weights.
        Tasks that would not be finished by ``deadline`` (time.monotonic()) are not started:
        a chunk starts only while the time left exceeds what the previous chunk took; the
        others are answered as error items."""
        tasks = request.tasks
        items: list[Prediction | HTTPError] = []
        # Label Studio sends every selected task in one request: work through them a few at a
        # time, so the decoded images of a large batch never sit in memory together.
        chunks = [tasks[start : start + CHUNK_TASKS] for start in range(0, len(tasks), CHUNK_TASKS)]
        # The next chunk's images download while this chunk is predicted (timed apart: a
        # download still running at the deadline must not touch this request's timing).
        fetching = self._prefetch.submit(self._fetch, chunks[0], request, config, Timing())
        took = 0.0  # the previous chunk's time: the estimate of the next one's
        for number in range(len(chunks)):
            started = time.monotonic()
            if deadline is not None and started + took >= deadline:
                fetching.cancel()
                late = deadline_error(self.settings.predict_deadline)
                items.extend(late for _ in range(len(tasks) - len(items)))
                break
            chunk = fetching.result()
            timing.add(chunk.timing)
            if number + 1 < len(chunks):
                fetching = self._prefetch.submit(self._fetch, chunks[number + 1], request, config, Timing())
            self._decode_chunk(chunk, timing, request_id)
            ready = [state for state in chunk.tasks if state.error is None]
            if ready:
                with timing.phase("predict"):
                    self._predict(ready, config, request, timing, request_id, served)
            items.extend(state.answer for state in chunk.tasks)
            del ready, chunk  # this chunk's images
            took = time.monotonic() - started

        interactive = request.is_interactive and len(items) == 1
        version = served.name if served is not None else self.model.version_for(config)
        encoded: list[str] = []
        failed = 0
        with timing.phase("encode"):
            for task, item in zip(tasks, items):
                if not isinstance(item, (HTTPError, TaskFailure)):
                    try:  # each task alone: one bad value (a NaN score) fails only its task
                        encoded.append(_encode(_versioned(item, version)))
                        continue
                    except (TypeError, ValueError) as exc:
                        item = self._task_error(exc, task.id, request_id)
                if isinstance(item, TaskFailure):
                    item = HTTPError(422, "task failed", item.message)
                if interactive:
                    raise item
                failed += 1
                encoded.append(error_item(item))
        self.metrics.tasks.labels("failed").inc(failed)
        self.metrics.tasks.labels("predicted").inc(len(items) - failed)
        for name, seconds in timing.phases.items():
            self.metrics.phases.labels(name).observe(seconds)
        return encode_results(encoded)

    def _task_error(self, exc: BaseException, task_id: int | None, request_id: str) -> HTTPError:
        error = client_error(exc)
        if error is None:
            logger.error(
                "task failed", exc_info=exc, extra={"request_id": request_id, "task_id": task_id}
            )
            return HTTPError(500, "internal error", f"task {task_id}: see the function's log (request {request_id})")
        logger.warning(
            "task failed", extra={"request_id": request_id, "task_id": task_id, "status": error.status, "detail": error.detail}
        )
        return error

    # -- inputs: which task data to fetch, fetched and decoded concurrently ----------------------

    def _fetch(self, tasks: Sequence[Task], request: PredictRequest, config: LabelConfig, timing: Timing) -> _Chunk:
        """The tasks' states with the bytes of every image their data points at, fetched
        concurrently, or the error of a task whose data has no usable value. Runs ahead on the
        prefetch thread: it touches only the states it makes."""
        # Objects some control labels (an Image shown only for reference is not fetched).
        targets = {o.name: o for c in config.controls for o in c.objects if o.tag in self.model.fetch_objects}
        credentials = _credentials(request)
        chunk = _Chunk([_TaskState(task) for task in tasks], timing)
        for state in chunk.tasks:
            try:
                state.wanted = {name: _task_value(state.task, obj) for name, obj in targets.items()}
            except HTTPError as exc:
                state.error = exc
        wanted = [(state, name, value) for state in chunk.tasks if state.error is None
                  for name, value in state.wanted.items()]  # fmt: skip
        if not wanted:  # a model that fetches its own images (fetch_objects empty)
            return chunk
        with timing.phase("fetch"):
            fetched = self.fetcher.fetch_many([(value, state.task.id, credentials) for state, _, value in wanted])
        for (state, name, _), data in zip(wanted, fetched):
            state.fetched[name] = data
        return chunk

    def _decode_chunk(self, chunk: _Chunk, timing: Timing, request_id: str) -> None:
        """Every task's images decoded, all of a chunk's concurrently, or the error that fails
        the task: its first image's that could not be fetched or decoded."""
        decodable = [(state, name, data) for state in chunk.tasks for name, data in state.fetched.items()
                     if isinstance(data, bytes)]  # fmt: skip
        if decodable:
            with timing.phase("decode"):
                decoded = list(self._decode_pool.map(self._decode, [data for _, _, data in decodable]))
            for (state, name, _), result in zip(decodable, decoded):
                state.decoded[name] = result
        for state in chunk.tasks:
            for name, data in state.fetched.items():
                result = state.decoded[name] if isinstance(data, bytes) else data
                if isinstance(result, BaseException):
                    state.error = self._task_error(result, state.task.id, request_id)
                    break
                state.images[name] = result

    def _decode(self, data: bytes) -> DecodedImage | BaseException:
        try:
            return decode_image(data, self.settings.max_image_pixels)
        except Exception as exc:  # noqa: BLE001 - returned: one bad image fails only its task
            return exc

    # -- the model ------------------------------------------------------------------------------

    def _predict(
        self, states: Sequence[_TaskState], config: LabelConfig, request: PredictRequest, timing: Timing, request_id: str,
        served: Served | None = None,
    ) -> None:
        """Each task's prediction (its images decoded, none failing), or the error that fails it."""
        inputs = [TaskInput(task=state.task, images=state.images) for state in states]
        credentials = _credentials(request)
        max_pixels = self.settings.max_image_pixels

        def fetch(value: str, task_id: int | None) -> bytes:
            return self.fetcher.fetch(value, task_id=task_id, credentials=credentials)

        def fetch_file(value: str, task_id: int | None, sink: BinaryIO) -> int:
            limit, timeout = self.settings.max_video_bytes, self.settings.video_fetch_timeout
            return self.fetcher.fetch_to(value, sink, limit=limit, timeout=timeout, task_id=task_id, credentials=credentials)

        def source(task: TaskInput, object_name: str) -> ImageSource:
            obj = config.objects.get(object_name)
            if obj is None:
                raise LabelConfigError(f"the label config has no object named {object_name!r}")
            value = _task_value(task.task, obj)

            def fetch_image() -> bytes:
                with timing.phase("fetch"):
                    return self.fetcher.fetch(value, task_id=task.id, credentials=credentials, cached=False)

            def decode(data: bytes) -> DecodedImage:
                with timing.phase("decode"):
                    return decode_image(data, max_pixels)

            key = self.fetcher.identity(value, task_id=task.id, credentials=credentials)
            return ImageSource(key=key, fetch=fetch_image, decode=decode)

        batch = Batch(
            tasks=inputs, label_config=config, request=request, fetch=fetch, fetch_file=fetch_file,
            telemetry=Telemetry(timing, self.metrics), source=source,
            trained=served.folder if served is not None else None,
        )
        try:
            out = list(self.model.predict(batch))
            if len(out) != len(inputs):
                raise RuntimeError(f"{self.model.model_class}.predict returned {len(out)} items for {len(inputs)} tasks")
        except (LabelConfigError, ProtocolError, HTTPError, WeightsError):
            raise  # the request as a whole is wrong: every task would fail the same way
        except Exception as exc:  # noqa: BLE001 - isolated below, task by task
            if len(states) == 1:
                states[0].prediction = self._task_error(exc, states[0].task.id, request_id)
                return
            # One task sank the batch: run each alone so the others are still answered.
            for state in states:
                self._predict([state], config, request, timing, request_id, served)
            return
        for state, item in zip(states, out):
            try:
                state.prediction = _check_item(item)
            except TypeError as exc:
                state.prediction = self._task_error(exc, state.task.id, request_id)
