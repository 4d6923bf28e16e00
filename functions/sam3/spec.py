"""What the SAM 3 function answers without its model: the label configs it serves, its settings,
and the version its model folder makes. No torch or transformers here: the front door serves
these (shared/runtime/front_door.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from lsfn.shared.label_config import LabelConfig
from lsfn.shared.prompts import mask_control
from lsfn.shared.runtime.model import Spec
from lsfn.shared.settings import FunctionSettings
from lsfn.shared.weights import WeightsError, content_hash, weights_file

__all__ = ["DEFAULT_FOLDER", "Sam3Settings", "Sam3Spec", "model_folder", "spec"]

MiB = 1 << 20
# Where `lsfn weights sam3` puts facebook/sam3 (gated: the hub token is needed to bake it).
DEFAULT_FOLDER = "sam3"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Sam3Settings(FunctionSettings):
    """SAM 3's environment variables (MODEL_CHECKPOINT as label-studio-ml-backend names it)."""

    # A facebook/sam3 folder in the weights directory (MODEL_ROOT), or an absolute path.
    checkpoint: str = Field(DEFAULT_FOLDER, validation_alias=_env("MODEL_CHECKPOINT"))
    # A pixel belongs to a mask when its probability reaches this (the sigmoid of the logit).
    mask_threshold: float = Field(0.5, ge=0, le=1, validation_alias=_env("MASK_THRESHOLD"))
    # Instances per image and per request at most, highest scores first.
    max_instances: int = Field(100, gt=0, validation_alias=_env("MAX_INSTANCES"))
    # Two instances of one label whose masks overlap this much are one (found by two synonyms).
    duplicate_iou: float = Field(0.7, gt=0, le=1, validation_alias=_env("DUPLICATE_IOU"))
    # Images per vision-encoder pass in batch pre-annotation; by default 8 on a GPU, 1 on a CPU.
    batch_size: int | None = Field(None, gt=0, validation_alias=_env("SAM3_BATCH_SIZE"))
    # The embedding cache (one facebook/sam3 embedding is about 134 MB in float32).
    cache_entries: int = Field(16, ge=0, validation_alias=_env("EMBEDDING_CACHE_ENTRIES"))
    cache_bytes: int = Field(2048 * MiB, ge=0, validation_alias=_env("EMBEDDING_CACHE_BYTES"))
    url_ttl: float = Field(300.0, ge=0, validation_alias=_env("EMBEDDING_URL_TTL"))


def model_folder(weights_dir: Path, name: str) -> Path:
    """MODEL_CHECKPOINT as a folder: inside the weights directory, or an absolute path."""
    path = Path(name) if Path(name).is_absolute() else weights_dir / name
    # The front door's image holds the weights' manifest, not the files: it lists them.
    if not weights_file(path / "config.json", weights_dir):
        raise WeightsError(f"MODEL_CHECKPOINT: no SAM 3 model folder {path} (lsfn weights sam3 --dest <MODEL_ROOT>)")
    return path


class Sam3Spec(Spec):
    model_version = "sam3"
    name = "sam3"
    settings_class = Sam3Settings
    options: Sam3Settings

    def check_label_config(self, config: LabelConfig) -> None:
        mask_control(config)

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        weights = model_folder(self.settings.model_root, self.options.checkpoint) / "model.safetensors"
        return [weights] if weights_file(weights, self.settings.model_root) else []

    def version_for(self, config: LabelConfig | None) -> str:
        """``sam3-<folder>@<hash of its weights>``."""
        folder = model_folder(self.settings.model_root, self.options.checkpoint)
        hashes = "".join(f"@{content_hash(w, root=self.settings.model_root)}" for w in self.weight_files(config))
        return f"sam3-{folder.name}{hashes}"


spec = Sam3Spec
