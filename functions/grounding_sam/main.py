"""The Grounding SAM function: type what you want, get every match segmented.

Grounding DINO finds the boxes (functions/grounding_dino), SAM 2 turns all boxes of an image
into masks in one decoder call on one image embedding (functions/sam2, whose embedding cache
spares the encoder when the annotator types another prompt on the same image). The masks are
brush regions, or polygons when the config's output control is PolygonLabels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lsfn.functions.grounding_dino.detector import Detector
from lsfn.functions.grounding_sam.spec import GroundingSamSpec
from lsfn.functions.sam2.engine import Sam2Engine
from lsfn.functions.sam2.loading import load_sam2
from lsfn.functions.torch_device import TorchModel
from lsfn.shared import results
from lsfn.shared.label_config import Control
from lsfn.shared.prompts import mask_control
from lsfn.shared.runtime import Batch, Prediction, create_app, http_target, warmup_image

# Boxes decoded together: all of an image's boxes in one call up to this many (each box repeats
# the image's features in the decoder, so this bounds its memory).
BOXES_PER_CALL = 32


class GroundingSamModel(GroundingSamSpec, TorchModel):
    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.detector = Detector(settings, self.options)
        self.sam: Sam2Engine | None = None

    def setup(self) -> None:
        device = self.device
        self.detector.load(device)
        self.sam, self.cache = load_sam2(self.settings.model_root, device, self.options)
        self.model_version = self.version_for(None)

    def move_to(self, device: str) -> bool:
        assert self.detector.engine is not None and self.sam is not None
        target = self.use_device(device)
        self.detector.move_to(target)
        self.sam.to(target)
        return True

    def warmup(self) -> None:
        assert self.detector.engine is not None and self.sam is not None
        frame, options = warmup_image(), self.detector.options
        self.detector.engine.detect([frame], "object .", options.box_threshold, options.text_threshold)
        height, width = frame.shape[:2]
        box = np.array([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])
        self.sam.segment(self.sam.embed(frame), np.zeros((0, 2)), np.zeros(0, dtype=bool), box, False)

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        control = mask_control(batch.label_config)
        prompt = self.detector.prompt(batch, control)
        out = []
        for task, detections in zip(batch.tasks, self.detector.detect(batch, control, prompt)):
            if not detections:
                out.append(results.prediction([]))
                continue
            pixels = task.image(control.object.name).pixels
            out.append(self._segment(batch, control, pixels, detections))
        return out

    def _segment(self, batch: Batch, control: Control, pixels: np.ndarray, detections: list[Any]) -> Prediction:
        assert self.sam is not None
        telemetry = batch.telemetry
        # The image's bytes are not at hand (the runtime decoded them): its pixels name it.
        content = "pixels:" + hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest()  # no copy
        embedding = self.cache.encoded(content, lambda: pixels, telemetry)
        boxes = np.array([d.box for d, _ in detections], dtype=np.float32)
        regions = []
        # A chunk's masks become regions before the next chunk is decoded: full-size masks of
        # many boxes are never held at once.
        for start in range(0, len(boxes), BOXES_PER_CALL):
            with telemetry.phase("mask-decoder"):
                masks, _ = self.sam.segment(
                    embedding, np.zeros((0, 2)), np.zeros(0, dtype=bool), boxes[start : start + BOXES_PER_CALL], multimask=False
                )
            telemetry.count("sam2_mask_decoder")
            with telemetry.phase("rle"):
                regions.extend(
                    results.mask_region(control.tag, control.name, control.object.name, label, mask, score=detection.score)
                    for (detection, label), mask in zip(detections[start : start + BOXES_PER_CALL], masks)
                )
        return results.prediction(r for r in regions if r is not None)


app = create_app(GroundingSamModel)
handler = http_target(app)
