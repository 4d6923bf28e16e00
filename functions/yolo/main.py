"""The YOLO function: detect, oriented boxes, segment, classify and pose through ultralytics.

Which task runs is decided by the project's label config (functions/yolo/controls.py). All image
tasks of a request are inferred as one batch per model. ultralytics is set up offline before
it is imported: it must never download weights, fonts or settings at request time.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before ultralytics is imported: no network probes, and a writable settings directory (the
# image's home may be read-only on Cloud Run).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install a missing package
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.gettempdir())  # it adds "Ultralytics/"

import numpy as np  # noqa: E402

from lsfn.functions.yolo.controls import Plan, regions, tracker_config  # noqa: E402
from lsfn.functions.torch_device import TorchModel  # noqa: E402
from lsfn.functions.yolo.spec import YoloSpec  # noqa: E402
from lsfn.shared import coords, results  # noqa: E402
from lsfn.shared.images import FetchError  # noqa: E402
from lsfn.shared.label_config import Control, LabelConfig  # noqa: E402
from lsfn.shared.protocol import TaskFailure  # noqa: E402
from lsfn.shared.runtime import Batch, Prediction, TaskError, TaskInput, create_app, http_target, task_value, warmup_image  # noqa: E402
from lsfn.shared.runtime.logs import logger  # noqa: E402
from lsfn.shared.ssrf import ForbiddenURL  # noqa: E402
from lsfn.shared.training_set import TrainingResult, TrainingSet  # noqa: E402
from lsfn.shared.weights import WeightsError, resolve_weights  # noqa: E402


class YoloModel(YoloSpec, TorchModel):
    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._models: OrderedDict[Path, tuple[Any, threading.Lock]] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()

    def setup(self) -> None:
        from PIL import Image

        pillow_open = Image.open
        from ultralytics import YOLO

        # Importing ultralytics replaces PIL's Image.open for the whole process with one that
        # pip-installs pi-heif when it meets an unreadable image: put Pillow's back (images
        # are decoded by shared.image_decode, which answers an unreadable one with a 422).
        Image.open = pillow_open
        self._yolo = YOLO
        self.use_device(self.settings.device)  # now: a DEVICE this torch cannot use fails the load
        # Load the weights shipped in the image now, so the first request does not wait for them.
        # One unloadable file must not take the function down: a request naming it gets a 422.
        for path in self.weight_files(None):
            try:
                self._model(path)
            except WeightsError as exc:
                logger.warning("weights not preloaded", extra={"weights": path.name, "detail": str(exc)[:500]})

    def move_to(self, device: str) -> bool:
        # ultralytics places a model on the device each predict call names.
        self.use_device(device)
        return True

    def warmup(self) -> None:
        frame = np.ascontiguousarray(warmup_image()[:, :, ::-1])  # BGR, as predict passes it
        options: dict[str, Any] = {"device": self.device, "verbose": False}
        if self.options.image_size:
            options["imgsz"] = self.options.image_size
        for model, lock in list(self._models.values()):
            with lock:
                model.predict([frame], **options)

    def _model(self, path: Path) -> tuple[Any, threading.Lock]:
        """The loaded model for a weights file, kept in a small LRU."""
        with self._lock:
            found = self._models.get(path)
            if found is not None:
                self._models.move_to_end(path)
                return found
            loading = self._loading.setdefault(path, threading.Lock())
        with loading:  # one load per file: concurrent first requests wait for it
            with self._lock:
                found = self._models.get(path)
            if found is not None:
                return found
            return self._load_model(path)

    def _load_model(self, path: Path) -> tuple[Any, threading.Lock]:
        try:
            model = self._yolo(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file must be a clear error, not a crash
            raise WeightsError(f"cannot load weights {path.name!r}: {type(exc).__name__}: {exc}") from None
        with self._lock:
            found = self._models.setdefault(path, (model, threading.Lock()))
            while len(self._models) > self.options.max_loaded_models:
                self._models.popitem(last=False)
        return found

    def _served(self, plan: Plan, path: Path) -> tuple[Any, threading.Lock] | None:
        """The model for a plan, checked against the control; None when none of its classes
        maps to the control's labels (the control is skipped, as label-studio-ml-backend does)."""
        model, lock = self._model(path)
        wanted = "detect" if plan.task == "track" else plan.task
        if model.task != wanted:
            raise WeightsError(
                f"model_path {plan.weights!r} is a {model.task} model; {plan.control.tag} "
                f'"{plan.control.name}" needs a {wanted} model'
            )
        names = [str(n) for n in model.names.values()]
        if plan.task == "pose":
            mapped = {name for name, _ in plan.options["points"]} & set(names)
        else:
            mapped = set((plan.labels_control or plan.control).label_map(names))
        if not mapped:
            logger.warning(
                "no label maps to a model class: control skipped",
                extra={"control": plan.control.name, "weights": plan.weights, "model_classes": names[:50]},
            )
            return None
        return model, lock

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        plans = self._plans(batch.label_config)
        per_task: list[list[dict[str, Any]]] = [[] for _ in batch.tasks]
        failed: dict[int, TaskFailure] = {}
        # One inference per (weights, image object) over the whole batch; controls sharing a
        # model (PolygonLabels and BrushLabels on the default segmenter) share its output.
        groups: dict[tuple[Path, str], list[Plan]] = {}
        for plan in plans:
            path = self._weights_for(plan, batch.trained)
            served = self._served(plan, path)
            if served is None:
                continue
            if plan.task == "track":
                for index, task in enumerate(batch.tasks):
                    try:  # one unusable video fails its own task only
                        per_task[index].extend(self._track(plan, served, task, batch))
                    except (TaskError, FetchError, ForbiddenURL) as exc:
                        failed[index] = TaskFailure(str(exc))
                continue
            groups.setdefault((path, plan.object_name), []).append(plan)
        for (path, object_name), group in groups.items():
            model, lock = self._model(path)
            images = [task.image(object_name).pixels[:, :, ::-1] for task in batch.tasks]  # ultralytics wants BGR
            options: dict[str, Any] = {"conf": min(plan.threshold for plan in group), "device": self.device, "verbose": False}
            if self.options.image_size:
                options["imgsz"] = self.options.image_size
            if any(plan.control.tag == "BrushLabels" for plan in group):
                options["retina_masks"] = True  # masks at the image's own resolution
            with lock:  # an ultralytics model is not safe to call from two threads at once
                outputs = model.predict([np.ascontiguousarray(image) for image in images], **options)
            names = {int(k): str(v) for k, v in model.names.items()}
            for index, (task, output) in enumerate(zip(batch.tasks, outputs)):
                image = task.image(object_name)
                for plan in group:
                    per_task[index].extend(regions(plan, output, names, (image.width, image.height)))
        return [failed.get(index) or results.prediction(found) for index, found in enumerate(per_task)]

    def _weights_for(self, plan: Plan, trained: Path | None) -> Path:
        """The weights a control is predicted with: the project's trained version's file for it
        (``train`` wrote it for a control of that name), when it is a model of the task the
        control asks now, else its model_path (a config changed since the training)."""
        if trained is not None and plan.task != "track":
            from lsfn.functions.yolo.training import trained_file

            path = trained / trained_file(plan.control.name)
            if path.is_file() and self._model(path)[0].task == plan.task:
                return path
        return resolve_weights(self.weights_dir, plan.weights)

    # -- training jobs (functions/yolo/training.py) ------------------------------------------

    def training_controls(self, config: LabelConfig) -> list[Control]:
        from lsfn.functions.yolo.training import trainable_controls

        return trainable_controls(config)

    def train(self, data: TrainingSet) -> TrainingResult:
        from lsfn.functions.yolo.training import train

        return train(data, self.weights_dir, self.device)

    def _track(
        self, plan: Plan, served: tuple[Any, threading.Lock], task: TaskInput, batch: Batch
    ) -> list[dict[str, Any]]:
        """Detect and track through a video read frame by frame from a temporary file."""
        import cv2

        value = task_value(task.task, plan.control.object)
        model, lock = served
        names = {int(k): str(v) for k, v in model.names.items()}
        label_map = plan.labels_control.label_map(names.values()) if plan.labels_control else {}
        stride, limit = self.options.video_frame_stride, self.options.video_frame_limit
        tracks: dict[int, list[dict[str, Any]]] = {}
        track_class: dict[int, str] = {}
        track_scores: dict[int, list[float]] = {}
        with (
            tempfile.TemporaryDirectory(prefix="lsfn-track-") as scratch,
            tempfile.NamedTemporaryFile(suffix=Path(value.split("?")[0]).suffix[:8] or ".mp4") as video,
        ):
            tracker = tracker_config(plan.options["tracker"], plan.options["overrides"], Path(scratch))
            batch.fetch_file(value, task.id, video)
            video.flush()
            capture = cv2.VideoCapture(video.name)
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            frames_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            capture.release()
            if frames_count <= 0:
                raise TaskError(f"task {task.id}: the video cannot be read")
            options = {"conf": plan.options["conf"], "iou": plan.options["iou"], "device": self.device,
                       "tracker": tracker, "vid_stride": stride, "verbose": False,
                       "stream": True, "persist": False}  # fmt: skip
            if self.options.image_size:
                options["imgsz"] = self.options.image_size
            with lock:
                for index, result in enumerate(model.track(source=video.name, **options)):
                    if index >= limit:
                        break
                    boxes = result.boxes
                    if boxes is None or boxes.id is None:
                        continue
                    height, width = result.orig_shape
                    # Result i is read after skipping stride - 1 frames: 1-based frame (i + 1) * stride.
                    frame = (index + 1) * stride
                    for box_id, cls, score, xyxy in zip(
                        boxes.id.int().tolist(), boxes.cls.int().tolist(), boxes.conf.tolist(), boxes.xyxy.tolist()
                    ):
                        x0, y0, x1, y1 = xyxy
                        value_pct = coords.rect_to_percent(coords.PixelRect(x0, y0, x1 - x0, y1 - y0), width, height)
                        tracks.setdefault(box_id, []).append(results.video_frame(frame, value_pct, time=frame / fps))
                        track_class.setdefault(box_id, names[cls])
                        track_scores.setdefault(box_id, []).append(float(score))
        out = []
        for box_id, sequence in tracks.items():
            label = label_map.get(track_class[box_id])
            if label is None:
                continue
            score = float(np.mean(track_scores[box_id]))
            out.append(results.video_rectangle(
                plan.control.name, plan.object_name, label, sequence,
                frames_count=frames_count, duration=frames_count / fps, score=score, stride=stride,
            ))  # fmt: skip
        return out


app = create_app(YoloModel)
handler = http_target(app)
