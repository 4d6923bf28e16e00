"""What the YOLO function answers without its model: the label configs it serves, which weights
file each control names, and the model version those files make. No ultralytics or torch here:
the front door serves these (shared/runtime/front_door.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field

from lsfn.functions.yolo.controls import Plan, plan_controls
from lsfn.shared.label_config import LabelConfig
from lsfn.shared.runtime.model import Spec
from lsfn.shared.settings import FunctionSettings
from lsfn.shared.weights import content_hash, resolve_weights

__all__ = ["SHIPPED_WEIGHTS", "YoloSettings", "YoloSpec", "spec"]


class YoloSettings(FunctionSettings):
    """The YOLO function's own environment variables (label-studio-ml-backend's names)."""

    allow_custom_model_path: bool = Field(True, validation_alias=AliasChoices("ALLOW_CUSTOM_MODEL_PATH"))
    # Different weights files kept loaded at once (each control may name its own).
    max_loaded_models: int = Field(4, gt=0, validation_alias=AliasChoices("YOLO_MAX_LOADED_MODELS"))
    # Inference size; by default each model's own (the size it was trained at), as ultralytics does.
    image_size: int | None = Field(None, gt=0, validation_alias=AliasChoices("YOLO_IMAGE_SIZE"))
    # Video tracking reads at most this many frames, every VIDEO_FRAME_STRIDE-th one.
    video_frame_limit: int = Field(3000, gt=0, validation_alias=AliasChoices("VIDEO_FRAME_LIMIT"))
    video_frame_stride: int = Field(1, gt=0, validation_alias=AliasChoices("VIDEO_FRAME_STRIDE"))


# The small demo detector shipped with the repository (scripts/default-detector): the weights
# directory when MODEL_ROOT is not set, so `lsfn serve yolo` predicts on a fresh machine.
SHIPPED_WEIGHTS = Path(__file__).parent / "models"


class YoloSpec(Spec):
    model_version = "yolo"
    name = "yolo"
    settings_class = YoloSettings
    options: YoloSettings

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        explicit = "model_root" in settings.model_fields_set
        self.weights_dir: Path = settings.model_root if explicit else SHIPPED_WEIGHTS

    def _plans(self, config: LabelConfig) -> list[Plan]:
        return plan_controls(config, self.settings.model_score_threshold, self.options.allow_custom_model_path)

    def check_label_config(self, config: LabelConfig) -> None:
        self.weight_files(config)

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        if config is None:  # the files loaded at start-up
            root = self.weights_dir
            return sorted(root.glob("*.pt"))[: self.options.max_loaded_models] if root.is_dir() else []
        return list(dict.fromkeys(resolve_weights(self.weights_dir, plan.weights) for plan in self._plans(config)))

    def version_for(self, config: LabelConfig | None) -> str:
        if config is None:
            return self.model_version
        return "yolo-" + "+".join(f"{path.stem}@{content_hash(path, root=self.weights_dir)}" for path in self.weight_files(config))


spec = YoloSpec
