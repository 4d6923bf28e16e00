"""The Model base class a function implements, and the batch its predict() receives.

A function only loads a model and turns already-fetched, already-decoded images into
predictions; everything HTTP and Label-Studio-specific happens in the runtime around it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from lsfn.shared.image_decode import DecodedImage
from lsfn.shared.label_config import Control, LabelConfig, LabelConfigError, ObjectTag
from lsfn.shared.protocol import Context, PredictRequest, Task, TaskFailure, WebhookEvent
from lsfn.shared.runtime.telemetry import Telemetry
from lsfn.shared.settings import FunctionSettings, Settings
from lsfn.shared.training_set import TrainingResult, TrainingSet

__all__ = ["WARMUP_SIZE", "Batch", "ImageSource", "Model", "Prediction", "Spec", "TaskInput", "task_value", "warmup_image"]

# One task's answer: a prediction (shared.results.prediction), several predictions (Label Studio
# stores each), or a TaskFailure for that task alone.
Prediction = dict[str, Any] | list[dict[str, Any]] | TaskFailure


def task_value(task: Task, obj: ObjectTag) -> str:
    """The task data an object points at (``<Image name="image" value="$image">``: data.image);
    a task without it is a TaskError naming the field (that task fails alone)."""
    from lsfn.shared.runtime.errors import TaskError

    key = obj.value_key or ""
    value = task.data.get(key)
    if not isinstance(value, str) or not value:
        problem = "has no" if value is None else "has a non-text"
        raise TaskError(f"task {task.id}: data {problem} {key!r} field (<{obj.tag} name={obj.name!r} value=${key}>)")
    return value


@dataclass(frozen=True)
class TaskInput:
    """One task with the images its label config's objects point at, fetched and decoded."""

    task: Task
    images: Mapping[str, DecodedImage]

    @property
    def id(self) -> int | None:
        return self.task.id

    def image(self, object_name: str | None = None) -> DecodedImage:
        """The decoded image of an object (``<Image name="image">``); without a name, the only one."""
        if object_name is not None:
            return self.images[object_name]
        if len(self.images) != 1:
            raise KeyError(f"the task has {len(self.images)} images; name the object: {sorted(self.images)}")
        return next(iter(self.images.values()))


@dataclass(frozen=True)
class ImageSource:
    """A task's image before anything is fetched, for a model that keeps what it computes from
    an image (``fetch_objects`` empty, so the runtime fetches nothing itself): ``key`` names
    the image (the URL as fetched, with the credentials it is fetched with), ``fetch()`` and
    ``decode(data)`` get it, timed as the fetch and decode phases. ``fetch()`` always asks the
    source (the image cache is not used): the model's own cache answers repeats, and it
    fetches only when it needs the current bytes."""

    key: str
    fetch: Callable[[], bytes]
    decode: Callable[[bytes], DecodedImage]


@dataclass(frozen=True)
class Batch:
    """What ``Model.predict`` receives: tasks in request order, the parsed label config, and the
    interactive context (None for batch pre-annotation)."""

    tasks: Sequence[TaskInput]
    label_config: LabelConfig
    request: PredictRequest
    # Fetch other task data with the request's credentials: fetch(value, task_id) -> bytes, and
    # fetch_file(value, task_id, sink) streams a video into a file (MAX_VIDEO_BYTES), -> size.
    fetch: Callable[[str, int | None], bytes]
    fetch_file: Callable[[str, int | None, BinaryIO], int]
    # Phase times (Server-Timing), cache lookups and model calls (/metrics) of this request.
    telemetry: Telemetry
    # The source of a task's image by object name; raises HTTPError 422 when the task's data
    # has no such field.
    source: Callable[[TaskInput, str], ImageSource]
    # The folder of the trained version the project is served with (the files ``train``
    # wrote), or None: the function's own weights (WEIGHTS_STORE, shared.runtime.trained).
    trained: Path | None = None

    @property
    def context(self) -> Context | None:
        return self.request.context

    @property
    def is_interactive(self) -> bool:
        return self.request.is_interactive

    @property
    def project(self) -> str | None:
        return self.request.project


class Spec:
    """What a function answers without its model: which label configs it serves, the model
    version for a config, the versions it lists. The front door (``lsfn serve --upstream``)
    serves these from a function's ``spec.py`` without importing any model library, so a
    subclass must stay cheap to import and to call (no torch, no weights loaded; reading a
    weights file's hash is fine, it is computed once)."""

    #: Reported by /setup and added to predictions that carry none (Label Studio skips tasks
    #: that already hold a prediction of this version). A class default an instance may set
    #: (the weights it loaded name their version).
    model_version: str = "0.0.1"
    #: Whether webhook events go to ``fit``.
    trains: ClassVar[bool] = False
    #: The function's own environment variables (a ``FunctionSettings`` subclass), read into
    #: ``self.options`` when the model is created: a bad value stops the start, naming it.
    settings_class: ClassVar[type[FunctionSettings]] = FunctionSettings
    #: Those variables' values (a subclass narrows the type: ``options: MySettings``).
    options: FunctionSettings

    def __init__(self, settings: Settings) -> None:
        # Cheap: the runtime creates the model before the server listens; weights load in setup.
        self.settings = settings
        self.options = self.settings_class()

    @property
    def model_class(self) -> str:
        return type(self).__name__

    #: The function's name in trained versions' names and the weights store's keys (default:
    #: the class's name without Model/Spec, lower case).
    name: ClassVar[str | None] = None

    @property
    def function_name(self) -> str:
        if self.name:
            return self.name
        base = re.sub(r"(Model|Spec)$", "", type(self).__name__) or type(self).__name__
        return re.sub(r"(?<!^)(?=[A-Z])", "-", base).lower()

    def check_label_config(self, config: LabelConfig) -> None:
        """Raise LabelConfigError when the model cannot serve this label config. Called by
        /setup and /predict; must be cheap and must not need the model loaded."""

    def version_for(self, config: LabelConfig | None) -> str:
        """The model version for a project's label config (a function whose weights depend on
        the config names them here); ``model_version`` by default. Must be cheap, and the same
        before and after the model loads: Label Studio compares it with the version stamped on
        predictions to skip tasks already predicted."""
        return self.model_version

    def versions(self) -> list[str]:
        """The model versions /versions lists: the version without a label config."""
        return [self.version_for(None)]

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        """The weights files in the weights directory behind the model version of a label
        config (without one: every file the function would load), for their content hashes."""
        return []


# The frame warm-ups run on: 1280 x 720, the size of a typical photo or video frame an annotator
# labels. Each model resizes it to its own input size (YOLO 640, SAM 2 1024, Grounding DINO
# 800 x 1333), so the kernels that size needs are chosen before the first request, not during it.
WARMUP_SIZE = (1280, 720)


def warmup_image(size: tuple[int, int] = WARMUP_SIZE) -> np.ndarray:
    """A deterministic RGB noise image (width, height): detectors see candidates in it, so the
    warm-up runs their post-processing too, as a real image would."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


class Model(Spec):
    """Base class of a model function: a ``Spec`` with the model behind it.

    ``setup`` loads weights from the image (never downloads) and ``warmup`` runs once; both run
    in the background while the server already answers /health with 503 "loading". ``predict``
    gets a ``Batch`` and returns one ``Prediction`` per task, in order. ``fit`` receives webhook
    events in the background when the model trains (``trains = True``).
    """

    #: Object tags whose task data the runtime fetches and decodes before predict.
    fetch_objects: ClassVar[frozenset[str]] = frozenset({"Image"})

    def setup(self) -> None:
        """Load weights from the image's weights directory (settings.model_root)."""

    def move_to(self, device: str) -> bool:
        """Move a model ``setup`` loaded with DEVICE=cpu to ``device`` (a DEVICE value: auto,
        cuda, ...) without reading its weights again; False when the function cannot (it is then
        set up again). A platform that snapshots a container's memory (Modal) loads on the CPU
        before the snapshot, where no GPU is attached, and moves the model after restoring it."""
        return False

    def warmup(self) -> None:
        """Run once after setup, before /health reports ready (compile kernels, first inference)."""

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        raise NotImplementedError

    def fit(self, event: WebhookEvent) -> None:
        """Handle a webhook event (ANNOTATION_CREATED, START_TRAINING, ...) in the background."""
        raise NotImplementedError

    # -- training jobs (shared.training_job): never where predictions are served -----------------

    @classmethod
    def can_train(cls) -> bool:
        """Whether the function trains on annotations (it implements ``train``)."""
        return cls.train is not Model.train

    def training_controls(self, config: LabelConfig) -> list[Control]:
        """The controls of a label config ``train`` learns from (their first object's image is
        fetched per task); LabelConfigError when there is none."""
        raise LabelConfigError(f"{self.model_class} does not train")

    def train(self, data: TrainingSet) -> TrainingResult:
        """Fine-tune on a project's annotations, starting from ``data.base`` (the version the
        project is served with) or the function's own weights; the new weights files, named as
        ``load_trained`` reads them from a version's folder, and the metric before and after on
        a held-out split. Called in a training job, without ``setup``."""
        raise NotImplementedError
