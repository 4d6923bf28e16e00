"""Loading SAM 2 with its embedding cache, for the SAM 2 and Grounding SAM functions."""

from __future__ import annotations

from pathlib import Path

from lsfn.functions.sam2.embeddings import EmbeddingCache
from lsfn.functions.sam2.engine import Sam2Engine
from lsfn.functions.sam2.spec import Sam2Settings, checkpoint_path

__all__ = ["load_sam2"]


def load_sam2(weights_dir: Path, device: str, options: Sam2Settings) -> tuple[Sam2Engine, EmbeddingCache]:
    """The model the settings name and its embedding cache, on ``device`` (resolved: TorchModel.device)."""
    config, name = options.model_files()
    engine = Sam2Engine.load(config, checkpoint_path(weights_dir, name), device)
    cache = EmbeddingCache(engine, max_entries=options.cache_entries, max_bytes=options.cache_bytes, url_ttl=options.url_ttl)
    return engine, cache
