"""`lsfn prelabel`: pre-annotate a whole Label Studio project through a function, resumably.

Label Studio's own "Retrieve predictions" sends every selected task in one synchronous
/predict and gives up after 100 s, storing nothing (PROTOCOL.md §3.2). Here the tasks are read
page by page, those that already hold a prediction of the function's model version are skipped
(a second run continues where the first stopped), the rest go to the function in batches with
the same /predict body Label Studio sends, several at once, and each finished batch's
predictions are stored at once through Label Studio's bulk import: an interrupted run loses at
most the batches in flight. Where the batches run is a ``Target`` (deploy/prelabel_targets.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO

from lsfn.shared.label_studio import LabelStudio, LabelStudioError, prediction_versions

__all__ = ["Batch", "Options", "Progress", "Summary", "Target", "id_ranges", "parse_task_ids", "predict_body", "prelabel", "select_tasks"]


@dataclass(frozen=True)
class Batch:
    key: str  # also the request id the function logs it under
    tasks: list[dict[str, Any]]
    body: bytes


class Target(Protocol):
    """Where batches are predicted."""

    def setup(self, body: bytes) -> str:
        """/setup with ``body``: the model version the function stamps on this config's predictions."""
        ...

    def run(self, batches: Sequence[Batch]) -> Iterator[tuple[Batch, list[Any] | Exception]]:
        """Each batch with the answer's ``results`` (one item per task) or why there is none,
        in the order they finish."""
        ...


@dataclass
class Options:
    project: int
    view: int | None = None
    task_ids: set[int] | None = None
    only_unlabeled: bool = False
    batch_size: int = 8
    prompt: str | None = None
    shard: tuple[int, int] = (0, 1)  # (index, count): this worker's part of the tasks


@dataclass
class Summary:
    selected: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    stored: int = 0
    failures: list[tuple[int | None, str]] = field(default_factory=list)
    seconds: float = 0.0
    version_warned: bool = False


_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*")


def id_ranges(ids: set[int]) -> str:
    """Task ids written back as ``--tasks`` takes them (``1-200,250``)."""
    parts: list[str] = []
    ordered = sorted(ids)
    start = previous = ordered[0] if ordered else 0
    for task_id in ordered[1:] + [None]:  # type: ignore[list-item]
        if task_id is not None and task_id == previous + 1:
            previous = task_id
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if task_id is not None:
            start = previous = task_id
    return ",".join(parts) if ordered else ""


def parse_task_ids(text: str) -> set[int]:
    """``1-20,25,30-40`` as a set of task ids."""
    ids: set[int] = set()
    for part in text.split(","):
        found = _RANGE.fullmatch(part)
        if not found:
            raise ValueError(f"--tasks: {part.strip()!r} is not a task id or a range of them (1-20)")
        first, last = int(found[1]), int(found[2] or found[1])
        if last < first:
            raise ValueError(f"--tasks: the range {part.strip()} runs backwards")
        ids.update(range(first, last + 1))
    return ids


def select_tasks(tasks: Iterator[dict[str, Any]], options: Options, version: str, summary: Summary) -> list[dict[str, Any]]:
    """The tasks to predict, in the project's (or the view's) order: this shard's, among
    ``--tasks``, unlabeled with ``--only-unlabeled``, and without a prediction of ``version``."""
    index, count = options.shard
    chosen = []
    seen: set[int] = set()
    for task in tasks:
        task_id = task.get("id")
        if not isinstance(task_id, int) or task_id % count != index or task_id in seen:
            continue  # (a tab ordered on a column with ties can page a task twice)
        seen.add(task_id)
        if options.task_ids is not None and task_id not in options.task_ids:
            continue
        if options.only_unlabeled and (task.get("total_annotations") or task.get("cancelled_annotations")):
            continue
        summary.selected += 1
        if version in prediction_versions(task):
            summary.skipped += 1
            continue
        chosen.append(task)
    return chosen


def project_key(project: dict[str, Any]) -> str:
    """The ``project`` field Label Studio sends: its id and its creation time in seconds."""
    created = project.get("created_at")
    try:
        stamp = int(datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp())
    except ValueError:
        stamp = 0
    return f"{project['id']}.{stamp}"


def prompt_context(label_config: str, prompt: str) -> dict[str, Any]:
    """The context of a typed prompt, as Label Studio sends what an annotator typed into a
    TextArea (the grounding functions read its text)."""
    names = re.findall(r"<TextArea\b[^>]*\bname=[\"']([^\"']+)", label_config)
    targets = re.findall(r"<Image\b[^>]*\bname=[\"']([^\"']+)", label_config)
    return {"result": [{"type": "textarea", "from_name": names[0] if names else "prompt",
                        "to_name": targets[0] if targets else "image", "value": {"text": [prompt]}}]}  # fmt: skip


def predict_body(tasks: list[dict[str, Any]], label_config: str, project: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"tasks": tasks, "label_config": label_config, "project": project, "params": params},
                      separators=(",", ":")).encode()  # fmt: skip


def predictions_of(task: dict[str, Any], item: Any, version: str) -> tuple[list[dict[str, Any]], str | None]:
    """The predictions to store for one task's answer item (a list of them is several), or why
    there are none."""
    items = item if isinstance(item, list) else [item]
    out = []
    for one in items:
        if not isinstance(one, dict):
            return [], "the function answered something that is not a prediction"
        if "result" not in one:
            return [], str(one.get("error") or "the function answered no result")
        out.append({"task": task["id"], "result": one["result"], "score": one.get("score"),
                    "model_version": one.get("model_version") or version})  # fmt: skip
    return out, None


class Progress:
    """Tasks done, failed and skipped, tasks per second and the time left: one line redrawn on a
    terminal, a log line every few seconds otherwise. (Written here rather than with tqdm: one
    line, and no dependency for a command that runs wherever Label Studio's users are.)"""

    def __init__(self, total: int, summary: Summary, out: TextIO = sys.stderr, interval: float = 5.0) -> None:
        self.total, self.summary, self.out = total, summary, out
        self.tty = out.isatty()
        self.interval = 0.2 if self.tty else interval
        self.started = time.monotonic()
        self._shown = 0.0

    def line(self) -> str:
        s = self.summary
        elapsed = max(time.monotonic() - self.started, 1e-6)
        finished = s.done + s.failed
        rate = finished / elapsed
        left = (self.total - finished) / rate if rate > 0 else float("inf")
        eta = "--" if left == float("inf") else f"{int(left // 60)}m{int(left % 60):02d}s"
        width = 24
        filled = int(width * finished / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (f"[{bar}] {finished}/{self.total} done {s.done} failed {s.failed} skipped {s.skipped} "
                f"{rate:.2f} tasks/s ETA {eta}")  # fmt: skip

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < self.interval:
            return
        self._shown = now
        if self.tty:
            self.out.write("\r" + self.line() + "\033[K")
        else:
            self.out.write("lsfn prelabel: " + self.line() + "\n")
        self.out.flush()

    def close(self) -> None:
        self.update(force=True)
        if self.tty:
            self.out.write("\n")


def prelabel(ls: LabelStudio, target: Target, options: Options, out: TextIO = sys.stderr,
             log: Callable[[str], None] | None = None) -> Summary:  # fmt: skip
    """Predict the selected tasks of the project and store the predictions; the summary."""
    say = log or (lambda line: print(f"lsfn prelabel: {line}", file=out, flush=True))
    started = time.monotonic()
    project = ls.get(f"/api/projects/{options.project}")
    label_config = project["label_config"]
    key = project_key(project)
    setup = json.dumps({"project": key, "schema": label_config, "hostname": ls.url, "access_token": "",
                        "model_version": None, "extra_params": None}).encode()  # fmt: skip
    version = target.setup(setup)
    summary = Summary()
    tasks = select_tasks(ls.tasks(options.project, options.view), options, version, summary)
    say(f"project {options.project}: {summary.selected} tasks selected, {summary.skipped} already hold a prediction "
        f"of {version}, {len(tasks)} to predict")  # fmt: skip
    params: dict[str, Any] = {"login": project.get("task_data_login"), "password": project.get("task_data_password"),
                              "context": prompt_context(label_config, options.prompt) if options.prompt else None}  # fmt: skip
    size = max(1, options.batch_size)
    batches = [Batch(f"prelabel-{options.project}-{options.shard[0]}-{n}", chunk,
                     predict_body(chunk, label_config, key, params))
               for n, chunk in enumerate(tasks[start : start + size] for start in range(0, len(tasks), size))]  # fmt: skip
    progress = Progress(len(tasks), summary, out)
    try:
        for batch, answer in target.run(batches):
            _store(ls, options.project, batch, answer, version, summary, say)
            progress.update()
    finally:
        progress.close()
        summary.seconds = time.monotonic() - started
    return summary


def _store(ls: LabelStudio, project: int, batch: Batch, answer: list[Any] | Exception, version: str, summary: Summary,
           say: Callable[[str], None]) -> None:  # fmt: skip
    """One finished batch: its predictions stored, its failures counted and reported."""
    if isinstance(answer, Exception):
        reason = str(answer) or type(answer).__name__
        answer = [{"error": reason}] * len(batch.tasks)
    elif len(answer) != len(batch.tasks):
        answer = [{"error": f"the function answered {len(answer)} results for {len(batch.tasks)} tasks"}] * len(batch.tasks)
    predictions: list[dict[str, Any]] = []
    failed: list[tuple[int | None, str]] = []
    for task, item in zip(batch.tasks, answer):
        found, problem = predictions_of(task, item, version)
        if problem is None:
            predictions.extend(found)
        else:
            failed.append((task.get("id"), problem))
    try:
        created = ls.import_predictions(project, predictions)
    except LabelStudioError as exc:  # this batch is not stored; the next run sends it again
        created = 0
        failed += [(p["task"], f"Label Studio did not store it: {exc}") for p in predictions]
    else:
        if created < len(predictions):
            # Label Studio leaves out predictions that do not fit the label config and says
            # only how many it stored: find which tasks lack theirs.
            missing = [p for p in predictions if not _holds(ls, p["task"], p["model_version"])]
            failed += [(p["task"], "Label Studio did not store its prediction (it does not fit the label config)")
                       for p in missing]  # fmt: skip
    failed = list(dict.fromkeys(failed))
    if not summary.version_warned and any(p["model_version"] != version for p in predictions):
        summary.version_warned = True
        say(f"the function stamps its predictions {predictions[0]['model_version']!r} but answered /setup with {version!r}: "
            "a later run cannot tell these tasks are done")  # fmt: skip
    summary.stored += created
    summary.done += len(batch.tasks) - len({task_id for task_id, _ in failed})
    summary.failed += len({task_id for task_id, _ in failed})
    for task_id, problem in failed:
        summary.failures.append((task_id, problem))
        say(f"task {task_id} failed: {problem}")


def _holds(ls: LabelStudio, task: int, version: str) -> bool:
    try:
        return version in ls.task_prediction_versions(task)
    except LabelStudioError:
        return False
