"""Grounding DINO for a function: the engine, its settings, and a batch's labelled boxes. The
Grounding DINO and Grounding SAM functions both detect through it."""

from __future__ import annotations

from typing import Any

from lsfn.functions.grounding_dino.engine import Detection, DinoEngine
from lsfn.functions.grounding_dino.spec import DEFAULT_MODEL, DinoSettings, model_folder
from lsfn.shared.label_config import Control, LabelConfigError
from lsfn.shared.runtime import Batch
from lsfn.shared.text_prompts import TextPrompt, text_prompt
from lsfn.shared.weights import WeightsError

__all__ = ["Detector"]


class Detector:
    """Grounding DINO's engine with its settings (DinoSettings), loaded by ``load``."""

    def __init__(self, settings: Any, options: DinoSettings) -> None:
        self.settings = settings
        self.options = options
        self.engine: DinoEngine | None = None

    def load(self, device: str) -> None:
        if self.options.legacy_weights and self.options.legacy_weights.endswith((".pth", ".pt")):
            raise WeightsError(
                f"GROUNDING_DINO_WEIGHTS={self.options.legacy_weights}: groundingdino-py checkpoints are not read here; "
                f"put a transformers Grounding DINO folder in MODEL_ROOT ({DEFAULT_MODEL}: lsfn weights grounding_dino) "
                "and name it with GROUNDING_DINO_MODEL"
            )
        folder = model_folder(self.settings.model_root, self.options.model)
        self.engine = DinoEngine.load(folder, device, self._batch_size(device))

    def move_to(self, device: str) -> None:
        """Move the loaded model to ``device`` (loaded on the CPU before a memory snapshot)."""
        assert self.engine is not None
        self.engine.to(device)
        self.engine.batch_size = self._batch_size(device)

    def _batch_size(self, device: str) -> int:
        return self.options.batch_size or (8 if device == "cuda" else 1)

    def box_threshold(self, control: Control) -> float:
        """The control's ``model_score_threshold`` when set, else BOX_THRESHOLD."""
        own = control.model_score_threshold
        if own is None:
            return self.options.box_threshold
        if not 0.0 <= own <= 1.0:  # NaN too
            raise LabelConfigError(f'{control.tag} "{control.name}": model_score_threshold must be between 0 and 1, not {own}')
        return own

    def prompt(self, batch: Batch, control: Control) -> TextPrompt:
        """What to look for: the typed text, else the control's labels (shared.text_prompts)."""
        prompt = text_prompt(batch.context, control)
        if prompt is None:
            raise LabelConfigError(f"nothing to look for: type a prompt or give {control.tag} {control.name!r} labels")
        return prompt

    def detect(self, batch: Batch, control: Control, prompt: TextPrompt) -> list[list[tuple[Detection, str]]]:
        """Each task's detections with their labels; detections that map to no label are dropped."""
        assert self.engine is not None
        images = [task.image(control.object.name).pixels for task in batch.tasks]
        threshold = self.box_threshold(control)
        with batch.telemetry.phase("detector"):
            found = self.engine.detect(images, prompt.caption, threshold, self.options.text_threshold,
                                       on_pass=lambda: batch.telemetry.count("grounding_dino"))  # fmt: skip
        labelled = []
        for detections in found:
            pairs = [(d, prompt.label_for(d.phrase)) for d in detections]
            labelled.append([(d, label) for d, label in pairs if label is not None])
        return labelled
