"""The SAM 2 function: a click or a box on an image answered with the mask of the object there.

Interactive only: Label Studio sends the annotator's points and boxes in the request's context
and shows the mask as a brush region (or a polygon, for a PolygonLabels config). Batch
pre-annotation has no prompts, so each task gets an empty prediction. The image is fetched and
encoded once; later clicks on it reuse its embedding (functions/sam2/embeddings.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.sam2.engine import SIZES, Embedding, Sam2Engine
from functions.sam2.embeddings import EmbeddingCache
from functions.torch_device import pick_device
from shared import results
from shared.label_config import Control, LabelConfig
from shared.prompts import PROMPT_TYPES, mask_control, output_label, prompts_for
from shared.protocol import Context
from shared.runtime import Batch, Model, Prediction, create_app, http_target
from shared.weights import WeightsError, content_hash, resolve_weights

MiB = 1 << 20


class Sam2Settings(BaseSettings):
    """The SAM 2 function's environment variables (label-studio-ml-backend's names where it has
    them: MODEL_CONFIG, MODEL_CHECKPOINT)."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

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


def load_sam2(weights_dir: Path, device: str, options: Sam2Settings) -> tuple[Sam2Engine, EmbeddingCache, str]:
    """The model the settings name, its embedding cache, and its version (checkpoint and hash)."""
    config, name = options.model_files()
    checkpoint = checkpoint_path(weights_dir, name)
    engine = Sam2Engine.load(config, checkpoint, pick_device(device))
    cache = EmbeddingCache(engine, max_entries=options.cache_entries, max_bytes=options.cache_bytes, url_ttl=options.url_ttl)
    return engine, cache, f"sam2-{checkpoint.stem}@{content_hash(checkpoint)}"


def _displayed_size(context: Context | None, object_name: str) -> tuple[int, int] | None:
    """The image size the annotator's browser reports with the regions (naturalWidth/Height)."""
    for region in context.regions(*PROMPT_TYPES) if context else []:
        if region.to_name in (None, object_name) and region.original_width and region.original_height:
            return region.original_width, region.original_height
    return None


class Sam2Model(Model):
    model_version = "sam2"
    # Images are fetched here, not by the runtime: a follow-up click must not fetch at all.
    fetch_objects = frozenset()

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.options = Sam2Settings()
        self.engine: Sam2Engine | None = None

    def setup(self) -> None:
        self.engine, self.cache, version = load_sam2(self.settings.model_root, self.settings.device, self.options)
        # The weights a prediction came from, as /health, /setup and predictions report it.
        self.model_version = version  # type: ignore[misc]

    def warmup(self) -> None:
        import numpy as np

        assert self.engine is not None
        embedding = self.engine.embed(np.zeros((64, 64, 3), dtype=np.uint8))
        self.engine.segment(embedding, np.array([[32.0, 32.0]]), np.array([True]), np.zeros((0, 4)), multimask=True)

    def check_label_config(self, config: LabelConfig) -> None:
        mask_control(config)

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
