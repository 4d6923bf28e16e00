"""What the Grounding SAM function answers without its models: the label configs it serves and
the version its two models make (Grounding DINO's folder and SAM 2's checkpoint). No torch,
transformers or sam2 here: the front door serves these (shared/runtime/front_door.py)."""

from __future__ import annotations

from pathlib import Path

from lsfn.functions.grounding_dino.spec import DinoSettings, dino_version, dino_weights
from lsfn.functions.sam2.spec import Sam2Settings, sam2_checkpoint, sam2_version
from lsfn.shared.label_config import LabelConfig
from lsfn.shared.prompts import mask_control
from lsfn.shared.runtime.model import Spec

__all__ = ["GroundingSamSettings", "GroundingSamSpec", "spec"]


class GroundingSamSettings(DinoSettings, Sam2Settings):
    """Grounding SAM's environment variables: Grounding DINO's and SAM 2's, which it runs both."""


class GroundingSamSpec(Spec):
    model_version = "grounding-sam"
    settings_class = GroundingSamSettings
    options: GroundingSamSettings

    def check_label_config(self, config: LabelConfig) -> None:
        mask_control(config)

    def version_for(self, config: LabelConfig | None) -> str:
        root = self.settings.model_root
        return f"{dino_version(root, self.options)}+{sam2_version(root, self.options)}"

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        root = self.settings.model_root
        return [*dino_weights(root, self.options), sam2_checkpoint(root, self.options)]


spec = GroundingSamSpec
