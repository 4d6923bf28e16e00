"""One training job: a project's annotations from Label Studio → the function's ``Model.train`` →
a new version in the weights store, served when its validation metric is not worse.

It runs where predictions are not served: `lsfn train` by hand, a child process of `lsfn
serve` (shared.runtime.train_trigger), a Modal function or a Cloud Run Job with a GPU. Task
images are fetched with the function's own ImageFetcher (Label Studio's credentials, the SSRF
policy, the size limits) and decoded as for a prediction, so it trains on what it predicts on.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsfn.shared.annotations import AnnotatedRegions, read_regions
from lsfn.shared.image_decode import decode_image
from lsfn.shared.images import ImageFetcher
from lsfn.shared.label_config import Control, LabelConfig, parse_label_config
from lsfn.shared.label_studio import LabelStudio
from lsfn.shared.protocol import Task
from lsfn.shared.runtime.model import Model, task_value
from lsfn.shared.settings import Settings
from lsfn.shared.trained_versions import TrainedVersions
from lsfn.shared.training_set import Example, TrainingSet

__all__ = ["JobReport", "annotated_examples", "run_training"]


@dataclass
class JobReport:
    """What a job did: the version it recorded, whether it is served, and why."""

    project: int
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    metric: str = ""
    before: float | None = None
    after: float | None = None
    examples: int = 0
    skipped_regions: int = 0
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _latest_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The task's newest annotation that was not skipped (cancelled)."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return max(kept, key=lambda a: (str(a.get("updated_at") or ""), int(a.get("id") or 0))) if kept else None


def annotated_examples(ls: LabelStudio, project: int, config: LabelConfig, controls: list[Control],
                       fetcher: ImageFetcher, settings: Settings, log: Callable[[str], None]) -> list[Example]:  # fmt: skip
    """Every task of the project with an annotation, its image fetched and decoded, its regions
    read per control (the controls' first object's image)."""
    obj = controls[0].object
    examples = []
    for raw in ls.tasks(project):
        annotation = _latest_annotation(raw)
        if annotation is None:
            continue
        task = Task.model_validate({"id": raw["id"], "data": raw.get("data") or {}})
        try:
            data = fetcher.fetch(task_value(task, obj), task_id=task.id)
            image = decode_image(data, settings.max_image_pixels)
        except Exception as exc:  # noqa: BLE001 - one task's image must not sink the job
            log(f"task {task.id}: left out, its image could not be read ({type(exc).__name__}: {exc})")
            continue
        result = annotation.get("result") or []
        regions: dict[str, AnnotatedRegions] = {c.name: read_regions(result, c, image.width, image.height) for c in controls}
        examples.append(Example(int(raw["id"]), int(annotation.get("id") or 0), str(annotation.get("updated_at") or ""),
                                image.pixels, regions))  # fmt: skip
    return examples


def run_training(model: Model, ls: LabelStudio, versions: TrainedVersions, project: int, *, base_weights: str | None = None,
                 epochs: int | None = None, options: Mapping[str, Any] | None = None, workdir: Path | None = None,
                 cache: Path | None = None, log: Callable[[str], None] = print) -> JobReport:  # fmt: skip
    """Train ``model``'s function on the project's annotations and record the new version;
    promote it when its metric on the held-out split is not worse than the served weights'."""
    started = time.monotonic()
    report = JobReport(project)
    details = ls.get(f"/api/projects/{project}")
    config = parse_label_config(details["label_config"])
    controls = model.training_controls(config)
    settings = model.settings
    fetcher = ImageFetcher(settings)
    try:
        examples = annotated_examples(ls, project, config, controls, fetcher, settings, log)
    finally:
        fetcher.close()
    report.examples = len(examples)
    report.skipped_regions = sum(r.skipped for e in examples for r in e.regions.values())
    log(f"project {project}: {len(examples)} annotated tasks ({report.skipped_regions} regions unreadable, left out)")
    served = versions.served(project)
    with tempfile.TemporaryDirectory(prefix="lsfn-train-", dir=workdir) as tmp:
        base = versions.fetch(served, cache or Path(tmp) / "cache") if served is not None else None
        data = TrainingSet(project, config, examples, Path(tmp), base=base, base_weights=base_weights, epochs=epochs,
                           options=dict(options or {}))  # fmt: skip
        result = model.train(data)
        report.metric, report.before, report.after, report.details = result.metric, result.before, result.after, result.details
        manifest = {
            "base": served.name if served is not None else base_weights or "the function's weights (model_path)",
            "label_config_sha256": hashlib.sha256(config.xml.encode()).hexdigest(),
            "data": [{"task": e.task_id, "annotation": e.annotation_id, "updated_at": e.updated_at} for e in examples],
            "metrics": {"name": result.metric, "before": result.before, "after": result.after},
            "details": result.details,
        }
        version = versions.record(project, list(result.files), manifest)
    report.version = version.name
    now = versions.served(project)
    if (now.name if now else None) != (served.name if served else None):
        # Another job promoted a version while this one trained: this one was scored against
        # weights no longer served, so it is kept, not served (press Start Training again).
        report.reason = f"kept, not served: {now.name if now else 'base'} was promoted while it trained"
    elif result.after >= result.before:
        versions.promote(version)
        report.promoted = True
        report.reason = f"{result.metric} {result.after:.4f} >= {result.before:.4f} of the weights it replaces"
    else:
        report.reason = (f"kept, not served: {result.metric} {result.after:.4f} < {result.before:.4f} of the served weights "
                         f"({served.name if served else 'the function’s own'})")  # fmt: skip
    report.seconds = round(time.monotonic() - started, 1)
    log(f"{version.name}: {report.reason}")
    return report
