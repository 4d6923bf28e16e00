"""What a training job hands a function's ``Model.train``, and what it gets back.

The job (shared.training_job) pulls a project's annotated tasks from Label Studio, fetches and
decodes their images under the same rules as predictions, and reads each annotation's regions
(shared.annotations); the function turns them into its own training format and fine-tunes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsfn.shared.annotations import AnnotatedRegions
from lsfn.shared.label_config import LabelConfig

__all__ = ["Example", "TrainingResult", "TrainingSet"]


@dataclass(frozen=True)
class Example:
    """One annotated task: its image as displayed, and its regions per control name."""

    task_id: int
    annotation_id: int
    updated_at: str
    pixels: np.ndarray  # (H, W, 3) RGB
    regions: Mapping[str, AnnotatedRegions]


@dataclass(frozen=True)
class TrainingSet:
    """A project's annotations to fine-tune on. ``base`` is the folder of the version the
    project serves now (a trained one), or None: the function's own weights (``model_path``)."""

    project: int
    label_config: LabelConfig
    examples: Sequence[Example]
    workdir: Path
    base: Path | None = None
    base_weights: str | None = None  # a weights file named by hand (lsfn train --base)
    epochs: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    # Options passed through to the function's trainer (lsfn train --train-arg key=value).
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingResult:
    """The new weights (files to store, named as the function loads them from a version's
    folder), and the validation metric on the held-out split of the weights it started from
    (``before``) and of the new ones (``after``): the new version is served when ``after`` is
    not worse."""

    files: Sequence[Path]
    metric: str  # e.g. "mAP50-95", "top1"
    before: float
    after: float
    details: Mapping[str, Any] = field(default_factory=dict)
