"""The Grounding DINO function: label by typing what you want.

The annotator types "football player" into the config's TextArea and presses Add: every
matching object comes back boxed, with the label the phrase maps to. Without a typed prompt
(batch "Retrieve predictions") the output control's labels, with their ``predicted_values`` as
synonyms, are the prompt (shared.text_prompts). All image tasks of a request go through the
model in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lsfn.functions.grounding_dino.detector import Detector
from lsfn.functions.grounding_dino.spec import GroundingDinoSpec, output_box_control
from lsfn.functions.torch_device import TorchModel
from lsfn.shared import coords, results
from lsfn.shared.runtime import Batch, Prediction, create_app, http_target, warmup_image


class GroundingDinoModel(GroundingDinoSpec, TorchModel):
    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.detector = Detector(settings, self.options)

    def setup(self) -> None:
        self.detector.load(self.device)
        self.model_version = self.version_for(None)

    def move_to(self, device: str) -> bool:
        assert self.detector.engine is not None
        self.detector.move_to(self.use_device(device))
        return True

    def warmup(self) -> None:
        assert self.detector.engine is not None
        options = self.detector.options
        self.detector.engine.detect([warmup_image()], "object .", options.box_threshold, options.text_threshold)

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        control = output_box_control(batch.label_config, batch.context)
        prompt = self.detector.prompt(batch, control)
        out = []
        for task, detections in zip(batch.tasks, self.detector.detect(batch, control, prompt)):
            image = task.image(control.object.name)
            size = (image.width, image.height)
            regions = [
                results.rectangle(
                    control.name, control.object.name, label,
                    coords.rect_to_percent(coords.PixelRect(x0, y0, x1 - x0, y1 - y0), *size), size=size, score=d.score,
                )  # fmt: skip
                for d, label in detections
                for x0, y0, x1, y1 in [d.box]
            ]
            out.append(results.prediction(regions))
        return out


app = create_app(GroundingDinoModel)
handler = http_target(app)
