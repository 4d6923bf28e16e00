"""What the Grounding DINO function answers without its model: the label configs it serves, the
model folder its settings name and the version that folder makes. No torch or transformers
here: the front door serves these (shared/runtime/front_door.py), and Grounding SAM reads the
same settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from lsfn.shared.label_config import Control, LabelConfig
from lsfn.shared.protocol import Context
from lsfn.shared.runtime.model import Spec
from lsfn.shared.settings import FunctionSettings
from lsfn.shared.weights import WeightsError, content_hash, weights_file, weights_folder

__all__ = ["DEFAULT_MODEL", "DinoSettings", "GroundingDinoSpec", "dino_version", "dino_weights", "model_folder", "output_box_control", "spec"]

# Where `lsfn weights grounding_dino` puts IDEA-Research/grounding-dino-tiny.
DEFAULT_MODEL = "grounding-dino-tiny"


class DinoSettings(FunctionSettings):
    """Grounding DINO's environment variables (label-studio-ml-backend's threshold names)."""

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
    if not weights_folder(path, weights_dir):
        raise WeightsError(f"GROUNDING_DINO_MODEL: no model folder {path} (lsfn weights grounding_dino --dest <MODEL_ROOT>)")
    return path


def output_box_control(config: LabelConfig, context: Context | None) -> Control:
    """The RectangleLabels on an Image the boxes answer: on the image the prompt was typed for."""
    controls = config.require("RectangleLabels", "Image")
    typed_on = {r.to_name for r in (context.regions("textarea") if context else []) if r.to_name}
    return next((c for c in controls if c.object.name in typed_on), controls[0])


def dino_weights(weights_dir: Path, options: DinoSettings) -> list[Path]:
    """The weights file in the model folder the settings name (none for a folder without one)."""
    weights = model_folder(weights_dir, options.model) / "model.safetensors"
    return [weights] if weights_file(weights, weights_dir) else []


def dino_version(weights_dir: Path, options: DinoSettings) -> str:
    """The version predictions carry: the model folder's name and its weights' content hash."""
    folder = model_folder(weights_dir, options.model)
    return f"grounding-dino-{folder.name}" + "".join(f"@{content_hash(w, root=weights_dir)}" for w in dino_weights(weights_dir, options))


class GroundingDinoSpec(Spec):
    model_version = "grounding-dino"
    settings_class = DinoSettings
    options: DinoSettings

    def check_label_config(self, config: LabelConfig) -> None:
        output_box_control(config, None)

    def version_for(self, config: LabelConfig | None) -> str:
        return dino_version(self.settings.model_root, self.options)

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        return dino_weights(self.settings.model_root, self.options)


spec = GroundingDinoSpec
