"""Fine-tuning YOLO on a project's annotations: the controls the function serves become
ultralytics datasets (RectangleLabels → detect, PolygonLabels and BrushLabels → segment,
Choices → classify), each trained from the weights the project is served with now, and scored
before and after on the same held-out split.

Classes: each label of a control is the first of its ``predicted_values`` the starting model
knows (or a class of its own name, any case), so the trained model keeps answering with the
names the label config already maps; a label the model does not know becomes a new class named
after it. The model's other classes are kept (a label config may map them later).

KeyPointLabels (pose) is not trained: Label Studio stores each keypoint as its own region,
without the person it belongs to, so a pose dataset is not defined by the annotations alone.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsfn.functions.yolo.controls import DEFAULT_WEIGHTS
from lsfn.shared import coords
from lsfn.shared.annotations import AnnotatedRegions
from lsfn.shared.label_config import Control, LabelConfig, LabelConfigError
from lsfn.shared.training_set import Example, TrainingResult, TrainingSet
from lsfn.shared.weights import resolve_weights

__all__ = ["TASKS", "class_names", "train", "trainable_controls", "trained_file", "write_dataset"]

TASKS = {"RectangleLabels": "detect", "PolygonLabels": "segment", "BrushLabels": "segment", "Choices": "classify"}
METRICS = {"detect": "mAP50-95", "segment": "box mAP50-95", "classify": "top1"}


# What a control's name or a class's name may be to name a file or a folder (a label config is
# written by any project admin: it must not name paths outside the job's folder).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,127}")


def trained_file(control_name: str) -> str:
    """The file a control's trained weights are kept in, in a version's folder."""
    if _SAFE_NAME.fullmatch(control_name) and ".." not in control_name:
        return f"{control_name}.pt"
    return "control-" + hashlib.sha256(control_name.encode()).hexdigest()[:16] + ".pt"


def trainable_controls(config: LabelConfig) -> list[Control]:
    """The controls on an Image the function serves and can train (not ``model_skip``)."""
    controls = [c for c in config.controls if c.tag in TASKS and c.object.tag == "Image" and not c.model_skip]
    for control in controls:
        unsafe = [v for v in control.label_values if not (_SAFE_NAME.fullmatch(v) and ".." not in v)] if control.tag == "Choices" else []
        if unsafe:
            raise LabelConfigError(f"Choices {control.name!r}: {unsafe[0]!r} cannot name a class folder (letters, digits, "
                                   "space . _ + - only)")  # fmt: skip
    if not controls:
        raise LabelConfigError("nothing to train: the label config has no RectangleLabels, PolygonLabels, BrushLabels "
                               "or Choices control on an Image")  # fmt: skip
    return controls


def class_names(control: Control, known: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """(the trained model's class names, each label's class index): the starting model's
    classes, then a class per label it does not know."""
    names = [str(name) for name in known]
    lower = {name.lower(): i for i, name in reversed(list(enumerate(names)))}
    index: dict[str, int] = {}
    for label in control.labels:
        found = next((names.index(v) for v in label.predicted_values if v in names), None)
        if found is None:
            found = names.index(label.value) if label.value in names else lower.get(label.value.lower())
        if found is None:
            names.append(label.value)
            found = len(names) - 1
        index[label.value] = found
    return names, index


def _split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = np.random.default_rng(seed).permutation(len(examples))
    count = min(max(1, round(len(examples) * fraction)), len(examples) - 1) if len(examples) > 1 else 0
    val = {int(i) for i in order[:count]}
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _label_lines(task: str, regions: AnnotatedRegions, index: Mapping[str, int], width: int, height: int) -> list[str]:
    lines = []
    if task == "detect":
        for box in regions.boxes:
            if box.label not in index:
                continue
            # A rotated rectangle is trained as the axis-aligned box around it.
            corners = coords.rect_corners(box.rect)
            x0, y0 = np.clip(corners.min(axis=0), 0, [width, height])
            x1, y1 = np.clip(corners.max(axis=0), 0, [width, height])
            if x1 > x0 and y1 > y0:
                lines.append(f"{index[box.label]} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                             f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")  # fmt: skip
    else:
        for outline in regions.outlines:
            if outline.label not in index:
                continue
            points = np.clip(outline.points / [width, height], 0.0, 1.0)
            lines.append(f"{index[outline.label]} " + " ".join(f"{v:.6f}" for v in points.reshape(-1)))
    return lines


@dataclass(frozen=True)
class Dataset:
    """A written dataset: what ultralytics trains on (a data.yaml, or a classification folder)
    and the examples held out for validation."""

    data: Path
    train: list[Example]
    val: list[Example]


def write_dataset(task: str, control: Control, examples: Sequence[Example], names: Sequence[str],
                  index: Mapping[str, int], root: Path, fraction: float, seed: int) -> Dataset:  # fmt: skip
    """``examples`` as an ultralytics dataset under ``root``. Tasks annotated with no region of
    the control are background images for detect and segment, and left out of classify."""
    if task == "classify":
        examples = [e for e in examples if any(c in index for c in e.regions[control.name].choices)]
    train, val = _split(examples, fraction, seed)
    if not train or not val:
        raise ValueError(f"{control.tag} {control.name!r}: {len(examples)} annotated tasks, too few to train and validate on")
    for split, chosen in (("train", train), ("val", val)):
        for example in chosen:
            regions = example.regions[control.name]
            height, width = example.pixels.shape[:2]
            name = f"{example.task_id}.png"
            if task == "classify":
                label = next(c for c in regions.choices if c in index)
                _save_png(example.pixels, root / split / names[index[label]] / name)
                continue
            _save_png(example.pixels, root / "images" / split / name)
            labels = root / "labels" / split / f"{example.task_id}.txt"
            labels.parent.mkdir(parents=True, exist_ok=True)
            labels.write_text("\n".join(_label_lines(task, regions, index, width, height)))
    if task == "classify":
        for split in ("train", "val"):  # every class a folder in both splits, as ultralytics reads them
            for name in names:
                (root / split / name).mkdir(parents=True, exist_ok=True)
        return Dataset(root, train, val)
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {i}: {_quoted(name)}\n" for i, name in enumerate(names)))  # fmt: skip
    return Dataset(yaml, train, val)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _classify_top1(model: Any, val: Sequence[Example], control: Control, index: Mapping[str, int],
                   names: Sequence[str], imgsz: int, device: str) -> float:  # fmt: skip
    """Top-1 accuracy by class name (ultralytics numbers classes by sorted folder name, which
    a starting model's own numbering need not follow)."""
    right = 0
    for example in val:
        label = next(c for c in example.regions[control.name].choices if c in index)
        result = model.predict(np.ascontiguousarray(example.pixels[:, :, ::-1]), imgsz=imgsz, device=device, verbose=False)[0]
        right += str(model.names[int(result.probs.top1)]) == names[index[label]]
    return right / len(val)


IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _matched(iou: np.ndarray, same_label: np.ndarray) -> np.ndarray:
    """(predictions, 10) true positives at IoU 0.5..0.95: each prediction and each annotated box
    matched once, highest IoU first (as ultralytics' validator matches)."""
    tp = np.zeros((iou.shape[1], len(IOU_THRESHOLDS)), dtype=bool)
    for i, threshold in enumerate(IOU_THRESHOLDS):
        pairs = np.argwhere((iou >= threshold) & same_label)  # (truth, prediction)
        if not len(pairs):
            continue
        pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
        pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
        pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        tp[pairs[:, 1], i] = True
    return tp


def _label_map50_95(model: Any, val: Sequence[Example], control: Control, imgsz: int, device: str) -> float:
    """Box mAP50-95 over the control's labels on the held-out tasks, the model's classes mapped
    to labels as predictions are (label_map): a label the model cannot answer scores 0 (the
    validator of ultralytics scores only the model's own classes, which would favour a model
    that does not know a label)."""
    import torch
    from ultralytics.utils.metrics import ap_per_class, box_iou

    labels = list(control.label_values)
    mapping = control.label_map([str(n) for n in model.names.values()])
    stats: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for example in val:
        regions = example.regions[control.name]  # boxes, or outlines' boxes (a segment model's boxes)
        drawn = [(b.label, coords.rect_corners(b.rect)) for b in regions.boxes] + [(o.label, o.points) for o in regions.outlines]
        truth = [(labels.index(label), points) for label, points in drawn if label in labels]
        gt_boxes = np.array([[*c.min(axis=0), *c.max(axis=0)] for _, c in truth]).reshape(-1, 4)
        gt_cls = np.array([label for label, _ in truth], dtype=float)
        output = model.predict(np.ascontiguousarray(example.pixels[:, :, ::-1]), imgsz=imgsz, device=device, conf=0.001,
                               verbose=False)[0]  # fmt: skip
        boxes = output.boxes
        classes = boxes.cls.int().tolist()
        keep = [i for i, c in enumerate(classes) if mapping.get(str(model.names[c])) in labels]  # classes no label takes: dropped
        pred_boxes = boxes.xyxy.cpu().numpy()[keep].reshape(-1, 4)
        pred_cls = np.array([labels.index(mapping[str(model.names[classes[i]])]) for i in keep], dtype=float)
        conf = boxes.conf.cpu().numpy()[keep]
        if len(pred_boxes) and len(gt_boxes):
            iou = box_iou(torch.tensor(gt_boxes, dtype=torch.float32), torch.tensor(pred_boxes, dtype=torch.float32)).numpy()
            tp = _matched(iou, gt_cls[:, None] == pred_cls[None, :])
        else:
            tp = np.zeros((len(pred_boxes), len(IOU_THRESHOLDS)), dtype=bool)
        stats.append((tp, conf, pred_cls, gt_cls))
    tp, conf, pred_cls, target_cls = (np.concatenate([s[i] for s in stats]) for i in range(4))
    if not len(target_cls):
        return 0.0
    ap = ap_per_class(tp, conf, pred_cls, target_cls)[5]
    return float(ap.mean()) if ap.size else 0.0


def _score(task: str, weights: Path, dataset: Dataset, control: Control, index: Mapping[str, int],
           names: Sequence[str], imgsz: int, device: str) -> float:  # fmt: skip
    from ultralytics import YOLO

    model = YOLO(str(weights))
    if task == "classify":
        return _classify_top1(model, dataset.val, control, index, names, imgsz, device)
    return _label_map50_95(model, dataset.val, control, imgsz, device)


def _train_imgsz(weights: Path) -> int:
    """The image size the starting model was trained at (ultralytics keeps it in the checkpoint)."""
    import torch

    checkpoint = torch.load(str(weights), map_location="cpu", weights_only=False)
    size = (checkpoint.get("train_args") or {}).get("imgsz", 640)
    return int(size if isinstance(size, int) else max(size))


def start_weights(control: Control, data: TrainingSet, weights_dir: Path) -> Path:
    """What a control is trained from: weights named by hand (--base), else the version the
    project is served with, else its model_path."""
    if data.base_weights is None and data.base is not None and (data.base / trained_file(control.name)).is_file():
        return data.base / trained_file(control.name)
    task = TASKS[control.tag]
    return resolve_weights(weights_dir, data.base_weights or control.model_path or DEFAULT_WEIGHTS[task])


def train(data: TrainingSet, weights_dir: Path, device: str) -> TrainingResult:
    """Fine-tune every trainable control of the project's label config; the new weights are
    ``<control name>.pt`` each. The metric is the mean over the controls."""
    from ultralytics import YOLO

    files, before, after, details = [], [], [], {}
    for control in trainable_controls(data.label_config):
        task = TASKS[control.tag]
        start = start_weights(control, data, weights_dir)
        model = YOLO(str(start))
        if model.task != task:
            raise LabelConfigError(f"{control.tag} {control.name!r} trains a {task} model; {start.name} is a {model.task} model")
        names, index = class_names(control, [str(n) for n in model.names.values()])
        if task == "classify":  # ultralytics numbers classification classes by sorted folder name
            listed, names = names, sorted(set(names))
            index = {label: names.index(listed[i]) for label, i in index.items()}
        root = data.workdir / trained_file(control.name).removesuffix(".pt")
        shutil.rmtree(root, ignore_errors=True)
        dataset = write_dataset(task, control, data.examples, names, index, root / "dataset", data.val_fraction, data.seed)
        imgsz = int(data.options.get("imgsz") or _train_imgsz(start))
        score_before = _score(task, start, dataset, control, index, names, imgsz, device)
        batch = int(data.options.get("batch") or min(16, len(dataset.train)))
        options: dict[str, Any] = {
            "epochs": data.epochs or 30, "imgsz": imgsz, "batch": batch, "nbs": batch, "optimizer": "AdamW",
            "lr0": 0.002, "warmup_epochs": 1, "close_mosaic": 0, "mosaic": 0.0 if len(dataset.train) < 100 else 1.0,
            "seed": data.seed, "deterministic": True, "workers": 0, "plots": False, "verbose": False,
            # ultralytics checks mixed precision on a GPU by downloading yolo26n.pt at run time:
            # the job never downloads, so it trains in float32 (TRAIN_ARGS amp=true allows the check).
            "amp": False,
            **{k: v for k, v in data.options.items() if k not in ("imgsz", "batch")},
            "data": str(dataset.data), "device": device, "project": str(root), "name": "run", "exist_ok": True,
        }  # fmt: skip
        model.train(**options)
        best = Path(model.trainer.best) if Path(model.trainer.best).is_file() else Path(model.trainer.last)
        out = data.workdir / "out" / trained_file(control.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, out)
        score_after = _score(task, out, dataset, control, index, names, imgsz, device)
        files.append(out)
        before.append(score_before)
        after.append(score_after)
        details[control.name] = {"task": task, "start": start.name, "classes": names, "metric": METRICS[task],
                                 "before": score_before, "after": score_after, "train_tasks": len(dataset.train),
                                 "val_tasks": len(dataset.val), "epochs": options["epochs"], "imgsz": imgsz}  # fmt: skip
    metric = METRICS[TASKS[trainable_controls(data.label_config)[0].tag]] if len(details) == 1 else "mean of the controls' metrics"
    return TrainingResult(files, metric, float(np.mean(before)), float(np.mean(after)), details)
