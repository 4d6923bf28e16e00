"""A test-only model function: a rectangle around the brightest region of each image.

Small but real: it loads its "weights" (MODEL_ROOT/bright.json, parameters; defaults without
the file, a failed load when it is unreadable) in setup,
and predicts from the decoded pixels the runtime hands it, so the tests exercise the whole path
from Label Studio's request to the answer without a neural network. Parameters it reads:
``threshold`` (fraction of the maximum brightness that counts as bright), ``load_seconds``
(a slow load, to test readiness). A task's ``data.hold`` makes its prediction take that many
seconds (to test concurrency), ``data.explode`` makes it raise and ``data.nan`` gives it a NaN
score (to test failure isolation). ``fit_seconds`` makes each webhook event take that long.
An interactive keypoint click answers the bright region containing the click.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np

from lsfn.shared import coords, results
from lsfn.shared.label_config import LabelConfig
from lsfn.shared.protocol import WebhookEvent
from lsfn.shared.runtime import Batch, Model, Prediction, create_app, http_target


class BrightModel(Model):
    model_version = "bright-1"
    trains = True

    def setup(self) -> None:
        path = self.settings.model_root / "bright.json"
        params = json.loads(path.read_text()) if path.exists() else {}
        self.threshold = float(params.get("threshold", 0.8))
        self.fit_seconds = float(params.get("fit_seconds", 0))
        time.sleep(float(params.get("load_seconds", 0)))
        self.fitted: list[str] = []

    def check_label_config(self, config: LabelConfig) -> None:
        config.require("RectangleLabels", "Image")

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        control = batch.label_config.require("RectangleLabels", "Image")[0]
        label = control.label_values[0] if control.label_values else "bright"
        clicks = batch.context.regions("keypointlabels") if batch.context else []
        out: list[Prediction] = []
        for task in batch.tasks:
            time.sleep(float(task.task.data.get("hold", 0)))
            if task.task.data.get("explode"):
                raise RuntimeError(f"task {task.id} asked to explode")
            image = task.image(control.object.name)
            gray = image.pixels.astype(np.float32).mean(axis=2)
            mask = gray >= self.threshold * max(float(gray.max()), 1.0)
            if clicks:
                x, y = coords.keypoint_from_percent(clicks[0].value, image.width, image.height)
                label = (clicks[0].labels or [label])[0]
                mask = _component(mask, int(min(x, image.width - 1)), int(min(y, image.height - 1)))
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                out.append(results.prediction([], model_version=self.model_version))
                continue
            rect = coords.PixelRect(float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))
            value = coords.rect_to_percent(rect, image.width, image.height)
            score = float("nan") if task.task.data.get("nan") else 1.0
            region = results.rectangle(
                control.name, control.object.name, label, value, size=(image.width, image.height), score=score
            )
            out.append(results.prediction([region]))
        return out

    def fit(self, event: WebhookEvent) -> None:
        time.sleep(self.fit_seconds)
        self.fitted.append(event.action)
        record = self.settings.model_root / "fitted.jsonl"
        with record.open("a") as fh:
            fh.write(json.dumps({"action": event.action, "project": event.project_id}) + "\n")


def _component(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 4-connected bright region holding pixel (x, y), empty if it is dark."""
    out = np.zeros_like(mask)
    if not mask[y, x]:
        return out
    stack = [(y, x)]
    out[y, x] = True
    height, width = mask.shape
    while stack:
        cy, cx = stack.pop()
        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
            if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not out[ny, nx]:
                out[ny, nx] = True
                stack.append((ny, nx))
    return out


app = create_app(BrightModel)
handler = http_target(app)
