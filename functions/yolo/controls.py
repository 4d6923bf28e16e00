"""Which YOLO task serves which control of a label config, and its results as Label Studio regions.

The mapping and the control attributes follow label-studio-ml-backend's YOLO example, so a label
config written for it works unchanged: RectangleLabels → detect (``model_obb="true"``: oriented
boxes), PolygonLabels and BrushLabels → segment, Choices → classify, KeyPointLabels → pose,
VideoRectangle on a Video → detect and track.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsfn.shared import coords, results
from lsfn.shared.label_config import Control, LabelConfig, LabelConfigError
from lsfn.shared.rle import mask_to_rle

__all__ = ["DEFAULT_WEIGHTS", "Plan", "plan_controls", "regions", "tracker_config"]

# label-studio-ml-backend's default weights per task, so configs without model_path behave alike.
DEFAULT_WEIGHTS = {
    "detect": "yolov8m.pt",
    "obb": "yolov8n-obb.pt",
    "segment": "yolov8n-seg.pt",
    "classify": "yolov8n-cls.pt",
    "pose": "yolov8n-pose.pt",
    "track": "yolov8n.pt",
}
TRACKERS = frozenset({"botsort", "bytetrack"})  # the tracker configs ultralytics ships
_TASK_OF = {"rectanglelabels": "detect", "polygonlabels": "segment", "brushlabels": "segment",
            "choices": "classify", "taxonomy": "classify", "keypointlabels": "pose"}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """One control served by one model: what to run and how to turn its output into regions."""

    control: Control
    task: str  # detect, obb, segment, classify, pose
    weights: str  # model_path, relative to the weights directory
    threshold: float
    # Extra controls a model feeds: a pose model's person boxes (model_add_bboxes) go into
    # "<name>_bbox"; a VideoRectangle takes its labels from a Labels control on the video.
    bbox_control: Control | None = None
    labels_control: Control | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def object_name(self) -> str:
        return self.control.object.name


def plan_controls(config: LabelConfig, default_threshold: float, allow_custom_path: bool) -> list[Plan]:
    """A plan for every control the function serves; LabelConfigError when there is none."""
    plans: list[Plan] = []
    for control in config.controls:
        if control.tag == "VideoRectangle" and control.object.tag == "Video" and not control.model_skip:
            plans.append(_track_plan(config, control, default_threshold, allow_custom_path))
            continue
        task = _TASK_OF.get(control.tag.lower())
        if task is None or control.object.tag != "Image" or control.model_skip:
            continue
        if task == "detect" and control.get_bool("model_obb"):
            task = "obb"
        custom = control.model_path if allow_custom_path else None
        threshold = control.model_score_threshold
        options: dict[str, Any] = {}
        bbox_control = None
        if task == "pose":
            options = {
                "point_threshold": control.get_float("model_point_threshold", 0.0),
                "point_size": control.get_float("model_point_size", 1.0),
                "points": _point_map(control),
            }
            if control.get_bool("model_add_bboxes", True):
                bbox_control = next((c for c in config.controls if c.name == f"{control.name}_bbox"), None)
        if task == "classify":
            options = {"multiple": control.get("choice", "single") not in ("single", "single-radio")}
        plans.append(
            Plan(
                control=control,
                task=task,
                weights=custom or DEFAULT_WEIGHTS[task],
                threshold=default_threshold if threshold is None else threshold,
                bbox_control=bbox_control,
                options=options,
            )
        )
    if not plans:
        raise LabelConfigError(
            "the label config has no control the YOLO function serves: RectangleLabels, PolygonLabels, "
            "BrushLabels, Choices or KeyPointLabels on an Image, VideoRectangle on a Video (without model_skip)"
        )
    return plans


def _track_plan(config: LabelConfig, control: Control, default_threshold: float, allow_custom_path: bool) -> Plan:
    tracker = (control.get("model_tracker") or "botsort").strip().lower()
    if tracker not in TRACKERS:
        raise LabelConfigError(f'VideoRectangle "{control.name}": model_tracker must be botsort or bytetrack, not {tracker!r}')
    labels = next(
        (c for c in config.controls if c.tag == "Labels" and set(c.to_name) & set(control.to_name)), None
    )
    if labels is None:
        raise LabelConfigError(f'VideoRectangle "{control.name}" needs a Labels control on the same video')
    threshold = control.model_score_threshold
    return Plan(
        control=control,
        task="track",
        weights=(control.model_path if allow_custom_path else None) or DEFAULT_WEIGHTS["track"],
        threshold=default_threshold if threshold is None else threshold,
        labels_control=labels,
        options={
            "tracker": tracker,
            "conf": control.get_float("model_conf", 0.25),
            "iou": control.get_float("model_iou", 0.7),
            # <VideoRectangle model_tracker="bytetrack" bytetrack_track_buffer="60"/> overrides a
            # key of the tracker's config, as label-studio-ml-backend allows.
            "overrides": {k[len(tracker) + 1 :]: v for k, v in control.attrs.items() if k.startswith(f"{tracker}_")},
        },
    )


def tracker_config(name: str, overrides: dict[str, str], directory: Path) -> str:
    """The tracker config to pass to ultralytics: its own file, or a copy in ``directory`` with
    ``overrides`` applied (each cast to the type of the value it replaces)."""
    if not overrides:
        return f"{name}.yaml"
    import yaml
    from ultralytics.utils import ROOT

    config = yaml.safe_load((ROOT / "cfg" / "trackers" / f"{name}.yaml").read_text())
    for key, text in overrides.items():
        if key not in config:
            raise LabelConfigError(f"{name} has no setting {key!r} (from the attribute {name}_{key})")
        current = config[key]
        # Numbers and switches only: a text setting (the ReID "model", a method name) would
        # let a label config make ultralytics load, or download, a file of its choosing.
        if not isinstance(current, (bool, int, float)):
            raise LabelConfigError(f"{name}_{key} cannot be set from a label config")
        try:
            config[key] = text.strip().lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(text)
        except ValueError:
            raise LabelConfigError(f"{name}_{key}={text!r} is not a {type(current).__name__}") from None
    if "model" in config:
        config["model"] = "auto"  # ReID from the detector's own features: nothing is loaded
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _point_map(control: Control) -> dict[tuple[str, int], str]:
    """(model class, keypoint index) -> label, from ``predicted_values`` and ``model_index``."""
    points: dict[tuple[str, int], str] = {}
    for label in control.labels:
        index = label.get("model_index")
        if index is None or not index.strip().isdigit():
            continue
        for name in label.predicted_values or (label.value,):
            points[(name, int(index))] = label.value
    return points


def regions(plan: Plan, result: Any, names: dict[int, str], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Label Studio regions for one control from one ultralytics ``Results`` of an image of
    ``size`` (width, height)."""
    if plan.task == "classify":
        return _choices(plan, result, names)
    if plan.task == "pose":
        return _pose(plan, result, names, size)
    label_map = plan.control.label_map(names.values())
    out: list[dict[str, Any]] = []
    boxes = result.obb if plan.task == "obb" else result.boxes
    if boxes is None:
        return out
    scores = boxes.conf.cpu().numpy()
    classes = boxes.cls.cpu().numpy().astype(int)
    # One copy from the device per image, not one per detection (each is a CUDA sync).
    corners = (boxes.xyxyxyxy if plan.task == "obb" else boxes.xyxy).cpu().numpy()
    name, target = plan.control.name, plan.object_name
    width, height = size
    for i, (score, cls) in enumerate(zip(scores, classes)):
        label = label_map.get(names[int(cls)])
        if label is None or score < plan.threshold:
            continue
        if plan.task == "detect":
            x0, y0, x1, y1 = corners[i].tolist()
            value = coords.rect_to_percent(coords.PixelRect(x0, y0, x1 - x0, y1 - y0), width, height)
            out.append(results.rectangle(name, target, label, value, size=size, score=score))
        elif plan.task == "obb":
            rect = coords.rect_from_corners(corners[i])
            value = coords.rect_to_percent(rect, width, height, clamp=False)
            out.append(results.rectangle(name, target, label, value, size=size, score=score))
        elif plan.control.tag == "BrushLabels":
            mask = result.masks.data[i].cpu().numpy() > 0.5
            if mask.shape != (height, width):
                raise RuntimeError(f"mask of shape {mask.shape} for an image of {width}x{height}")
            out.append(results.brush_rle(name, target, label, mask_to_rle(mask), size=size, score=score))
        else:
            points = result.masks.xy[i]
            if len(points) < 3:
                continue
            value_points = coords.polygon_to_percent(points, width, height)
            out.append(results.polygon(name, target, label, value_points, size=size, score=score))
    return out


def _choices(plan: Plan, result: Any, names: dict[int, str]) -> list[dict[str, Any]]:
    probs = result.probs.data.cpu().numpy()
    label_map = plan.control.label_map(names.values())
    mapped = [(i, label_map[names[i]]) for i in range(len(probs)) if names[i] in label_map]
    if not mapped:
        return []
    if plan.options.get("multiple"):
        chosen = [(probs[i], label) for i, label in mapped if probs[i] >= plan.threshold]
    else:
        best = max(mapped, key=lambda item: probs[item[0]])
        chosen = [(probs[best[0]], best[1])] if probs[best[0]] >= plan.threshold else []
    if not chosen:
        return []
    labels = list(dict.fromkeys(label for _, label in chosen))
    score = float(np.mean([p for p, _ in chosen]))
    if plan.control.tag == "Taxonomy":  # a top-level item per selection
        return [results.taxonomy(plan.control.name, plan.object_name, [[label] for label in labels], score=score)]
    return [results.choices(plan.control.name, plan.object_name, labels, score=score)]


def _pose(plan: Plan, result: Any, names: dict[int, str], size: tuple[int, int]) -> list[dict[str, Any]]:
    points: dict[tuple[str, int], str] = plan.options["points"]
    wanted = {name for name, _ in points}
    keypoints, boxes = result.keypoints, result.boxes
    if keypoints is None or boxes is None:
        return []
    width, height = size
    xy = keypoints.xy.cpu().numpy()
    confs = keypoints.conf.cpu().numpy() if keypoints.conf is not None else np.ones(xy.shape[:2])
    point_size = 100.0 * plan.options["point_size"] / width  # model_point_size is in pixels
    out: list[dict[str, Any]] = []
    person_boxes = boxes.xyxy.cpu().numpy()
    for i, (score, cls) in enumerate(zip(boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy().astype(int))):
        model_class = names[int(cls)]
        if model_class not in wanted or score < plan.threshold:
            continue
        parent = None
        if plan.bbox_control is not None:
            x0, y0, x1, y1 = person_boxes[i].tolist()
            value = coords.rect_to_percent(coords.PixelRect(x0, y0, x1 - x0, y1 - y0), width, height)
            bbox_label = plan.bbox_control.label_for(model_class, names.values()) or model_class
            box = results.rectangle(plan.bbox_control.name, plan.object_name, bbox_label, value, size=size, score=score)
            parent = box["id"]
            out.append(box)
        for index, ((x, y), conf) in enumerate(zip(xy[i], confs[i])):
            label = points.get((model_class, index))
            if label is None or conf < plan.options["point_threshold"] or (x == 0 and y == 0):
                continue
            px, py = coords.keypoint_to_percent(float(x), float(y), width, height)
            region = results.keypoint(
                plan.control.name, plan.object_name, label, px, py, size=size, point_width=point_size, score=float(conf)
            )
            if parent is not None:
                region["parentID"] = parent
            out.append(region)
    return out
