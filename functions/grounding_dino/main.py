"""The Grounding DINO function: label by typing what you want.

The annotator types "football player" into the config's TextArea and presses Add: every
matching object comes back boxed, with the label the phrase maps to. Without a typed prompt
(batch "Retrieve predictions") the output control's labels, with their ``predicted_values`` as
synonyms, are the prompt (shared.text_prompts). All image tasks of a request go through the
model in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.grounding_dino.engine import Detection, DinoEngine
from functions.torch_device import pick_device
from shared import coords, results
from shared.label_config import Control, LabelConfig, LabelConfigError
from shared.protocol import Context
from shared.runtime import Batch, Model, Prediction, create_app, http_target
from shared.text_prompts import TextPrompt, text_prompt
from shared.weights import WeightsError, content_hash

# Where `lsfn weights grounding_dino` puts IDEA-Research/grounding-dino-tiny.
DEFAULT_MODEL = "grounding-dino-tiny"


class DinoSettings(BaseSettings):
    """Grounding DINO's environment variables (label-studio-ml-backend's threshold names)."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    box_threshold: float = Field(0.3, ge=0, le=1, validation_alias=AliasChoices("BOX_THRESHOLD"))
    text_threshold: float = Field(0.25, ge=0, le=1, validation_alias=AliasChoices("TEXT_THRESHOLD"))
    # A transformers Grounding DINO folder in the weights directory (MODEL_ROOT), or an absolute path.
    model: str = Field(DEFAULT_MODEL, validation_alias=AliasChoices("GROUNDING_DINO_MODEL"))
    # label-studio-ml-backend's original-format checkpoint: named here only to explain its absence.
    legacy_weights: str | None = Field(None, validation_alias=AliasChoices("GROUNDING_DINO_WEIGHTS"))
    # Images per forward pass; by default 8 on a GPU and 1 on a CPU, where a batch of 800-pixel
    # images takes longer than the same images one by one (README: the engine comparison).
    batch_size: int | None = Field(None, gt=0, validation_alias=AliasChoices("GROUNDING_DINO_BATCH_SIZE"))


def model_folder(weights_dir: Path, name: str) -> Path:
    """GROUNDING_DINO_MODEL as a folder: inside the weights directory, or an absolute path."""
    path = Path(name) if Path(name).is_absolute() else weights_dir / name
    if not path.is_dir():
        raise WeightsError(f"GROUNDING_DINO_MODEL: no model folder {path} (lsfn weights grounding_dino --dest <MODEL_ROOT>)")
    return path


def output_box_control(config: LabelConfig, context: Context | None) -> Control:
    """The RectangleLabels on an Image the boxes answer: on the image the prompt was typed for."""
    controls = config.require("RectangleLabels", "Image")
    typed_on = {r.to_name for r in (context.regions("textarea") if context else []) if r.to_name}
    return next((c for c in controls if c.object.name in typed_on), controls[0])


class Detector:
    """Grounding DINO for a function: the engine, its settings, and a batch's labelled boxes.
    The Grounding SAM function uses it too."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.options = DinoSettings()
        self.engine: DinoEngine | None = None
        self.version = "grounding-dino"

    def load(self, device: str) -> None:
        if self.options.legacy_weights and self.options.legacy_weights.endswith((".pth", ".pt")):
            raise WeightsError(
                f"GROUNDING_DINO_WEIGHTS={self.options.legacy_weights}: groundingdino-py checkpoints are not read here; "
                f"put a transformers Grounding DINO folder in MODEL_ROOT ({DEFAULT_MODEL}: lsfn weights grounding_dino) "
                "and name it with GROUNDING_DINO_MODEL"
            )
        folder = model_folder(self.settings.model_root, self.options.model)
        batch_size = self.options.batch_size or (8 if device == "cuda" else 1)
        self.engine = DinoEngine.load(folder, device, batch_size)
        weights = folder / "model.safetensors"
        self.version = f"grounding-dino-{folder.name}" + (f"@{content_hash(weights)}" if weights.is_file() else "")

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


class GroundingDinoModel(Model):
    model_version = "grounding-dino"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.detector = Detector(settings)

    def setup(self) -> None:
        self.detector.load(pick_device(self.settings.device))
        self.model_version = self.detector.version  # type: ignore[misc]

    def warmup(self) -> None:
        import numpy as np

        assert self.detector.engine is not None
        self.detector.engine.detect([np.zeros((64, 64, 3), dtype=np.uint8)], "object .", 1.0, 1.0)

    def check_label_config(self, config: LabelConfig) -> None:
        output_box_control(config, None)

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
