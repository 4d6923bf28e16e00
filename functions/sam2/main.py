"""The SAM 2 function: a click or a box on an image answered with the mask of the object there.

Interactive only: Label Studio sends the annotator's points and boxes in the request's context
and shows the mask as a brush region (or a polygon, for a PolygonLabels config). Batch
pre-annotation has no prompts, so each task gets an empty prediction. The image is fetched and
encoded once; later clicks on it reuse its embedding (functions/sam2/embeddings.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lsfn.functions.sam2.engine import Embedding, Sam2Engine
from lsfn.functions.sam2.loading import load_sam2
from lsfn.functions.sam2.spec import Sam2Spec
from lsfn.functions.torch_device import TorchModel
from lsfn.shared import results
from lsfn.shared.label_config import Control
from lsfn.shared.prompts import PROMPT_TYPES, mask_control, output_label, prompts_for
from lsfn.shared.protocol import Context
from lsfn.shared.runtime import Batch, Prediction, create_app, http_target, warmup_image


def _displayed_size(context: Context | None, object_name: str) -> tuple[int, int] | None:
    """The image size the annotator's browser reports with the regions (naturalWidth/Height)."""
    for region in context.regions(*PROMPT_TYPES) if context else []:
        if region.to_name in (None, object_name) and region.original_width and region.original_height:
            return region.original_width, region.original_height
    return None


class Sam2Model(Sam2Spec, TorchModel):
    # Images are fetched here, not by the runtime: a follow-up click must not fetch at all.
    fetch_objects = frozenset()

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.engine: Sam2Engine | None = None

    def setup(self) -> None:
        self.engine, self.cache = load_sam2(self.settings.model_root, self.device, self.options)
        # The weights a prediction came from, as /health reports it.
        self.model_version = self.version_for(None)

    def move_to(self, device: str) -> bool:
        assert self.engine is not None
        self.engine.to(self.use_device(device))
        return True

    def warmup(self) -> None:
        import numpy as np

        assert self.engine is not None
        frame = warmup_image()
        embedding = self.engine.embed(frame)
        # A click, as an annotator's first one, in the middle of the frame.
        middle = np.array([[frame.shape[1] / 2, frame.shape[0] / 2]])
        self.engine.segment(embedding, middle, np.array([True]), np.zeros((0, 4)), multimask=True)

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        control = mask_control(batch.label_config, batch.context)
        target = control.object.name
        # Checked on a nominal size first: a malformed region fails before any fetch.
        if not prompts_for(batch.context, target, 100, 100):
            # Batch pre-annotation, or regions on another image: nothing to segment.
            return [results.prediction([]) for _ in batch.tasks]
        size = _displayed_size(batch.context, target)
        return [
            self._segment(batch, control, self.cache.embedding(batch.source(task, target), batch.telemetry, size))
            for task in batch.tasks
        ]

    def _segment(self, batch: Batch, control: Control, embedding: Embedding) -> Prediction:
        assert self.engine is not None
        target = control.object.name
        prompts = prompts_for(batch.context, target, embedding.width, embedding.height)
        # One click is ambiguous (a part or the whole?): take the best of three proposals.
        # More points or a box say which, and a single mask fits them better.
        single_click = len(prompts.points) == 1 and len(prompts.boxes) == 0
        telemetry = batch.telemetry
        with telemetry.phase("mask-decoder"):
            masks, scores = self.engine.segment(embedding, prompts.points, prompts.positive, prompts.boxes, multimask=single_click)
        telemetry.count("sam2_mask_decoder")
        label = output_label(control, prompts.labels)
        with telemetry.phase("rle"):
            regions = [
                results.mask_region(control.tag, control.name, target, label, mask, score=float(score))
                for mask, score in zip(masks, scores)
            ]
        return results.prediction(r for r in regions if r is not None)


app = create_app(Sam2Model)
handler = http_target(app)
