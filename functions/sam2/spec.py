"""What the SAM 2 function answers without its model: the label configs it serves, the checkpoint
its settings name, and the version that checkpoint makes. No torch or sam2 here: the front door
serves these (shared/runtime/front_door.py), and Grounding SAM reads the same settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field

from lsfn.shared.label_config import LabelConfig
from lsfn.shared.prompts import mask_control
from lsfn.shared.runtime.model import Spec
from lsfn.shared.settings import FunctionSettings
from lsfn.shared.weights import WeightsError, content_hash, resolve_weights

__all__ = ["SIZES", "Sam2Settings", "Sam2Spec", "checkpoint_path", "sam2_checkpoint", "sam2_version", "spec"]

MiB = 1 << 20

# Model sizes by their short name: (config packaged in sam2, checkpoint file Meta publishes).
SIZES: dict[str, tuple[str, str]] = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}


class Sam2Settings(FunctionSettings):
    """The SAM 2 function's environment variables (label-studio-ml-backend's names where it has
    them: MODEL_CONFIG, MODEL_CHECKPOINT)."""

    # tiny, small, base_plus or large: sets the config and checkpoint file both.
    size: Literal["tiny", "small", "base_plus", "large"] = Field("large", validation_alias=AliasChoices("MODEL_SIZE"))
    # A config packaged in sam2 (configs/sam2.1/sam2.1_hiera_l.yaml), or a size's short name.
    config_name: str | None = Field(None, validation_alias=AliasChoices("MODEL_CONFIG"))
    # A file in the weights directory (MODEL_ROOT), or an absolute path.
    checkpoint: str | None = Field(None, validation_alias=AliasChoices("MODEL_CHECKPOINT"))
    cache_entries: int = Field(64, ge=0, validation_alias=AliasChoices("EMBEDDING_CACHE_ENTRIES"))
    cache_bytes: int = Field(1024 * MiB, ge=0, validation_alias=AliasChoices("EMBEDDING_CACHE_BYTES"))
    # How long a URL is trusted to name the bytes it was fetched as (no fetch on a click within it).
    url_ttl: float = Field(300.0, ge=0, validation_alias=AliasChoices("EMBEDDING_URL_TTL"))

    def model_files(self) -> tuple[str, str]:
        """(config, checkpoint file name) after the size shorthand is applied."""
        config = self.config_name or SIZES[self.size][0]
        size = config if config in SIZES else self.size
        if config in SIZES:
            config = SIZES[config][0]
        return config, self.checkpoint or SIZES[size][1]


def checkpoint_path(weights_dir: Path, name: str) -> Path:
    """MODEL_CHECKPOINT as a file: inside the weights directory, or an absolute path (set by
    whoever deploys the function, as label-studio-ml-backend allows)."""
    path = Path(name)
    if path.is_absolute():
        if not path.is_file():
            raise WeightsError(f"MODEL_CHECKPOINT {name!r}: no such file")
        return path
    try:
        return resolve_weights(weights_dir, name)
    except WeightsError as exc:
        raise WeightsError(f"MODEL_CHECKPOINT: {exc} (put the checkpoint there or set MODEL_ROOT)") from None


def sam2_checkpoint(weights_dir: Path, options: Sam2Settings) -> Path:
    """The checkpoint file the settings name."""
    return checkpoint_path(weights_dir, options.model_files()[1])


def sam2_version(weights_dir: Path, options: Sam2Settings) -> str:
    """The version predictions carry: the checkpoint's name and content hash."""
    checkpoint = sam2_checkpoint(weights_dir, options)
    return f"sam2-{checkpoint.stem}@{content_hash(checkpoint, root=weights_dir)}"


class Sam2Spec(Spec):
    model_version = "sam2"
    settings_class = Sam2Settings
    options: Sam2Settings

    def check_label_config(self, config: LabelConfig) -> None:
        mask_control(config)

    def version_for(self, config: LabelConfig | None) -> str:
        return sam2_version(self.settings.model_root, self.options)

    def weight_files(self, config: LabelConfig | None) -> list[Path]:
        return [sam2_checkpoint(self.settings.model_root, self.options)]


spec = Sam2Spec
