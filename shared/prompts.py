"""The annotator's clicks and boxes in an interactive request, as pixel prompts for a model.

Label Studio sends the regions just drawn in ``params.context.result`` (PROTOCOL.md §4): smart
KeyPointLabels points in percent with ``is_positive`` (false when drawn as a negative click),
RectangleLabels boxes in percent. label-studio-ml-backend reads ``is_positive``; label configs
written for it also mark negative clicks with a label named "negative" (the seed's SAM 2
config), which carries no ``is_positive`` when the tool is not smart. Either marks a point
negative here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lsfn.shared import coords
from lsfn.shared.label_config import Control, LabelConfig
from lsfn.shared.protocol import Context, ContextRegion, ProtocolError

__all__ = ["MAX_BOXES", "MAX_POINTS", "NEGATIVE_LABELS", "PROMPT_TYPES", "Prompts", "mask_control", "output_label", "prompts_for"]

# Label values that make a click negative (compared case-insensitively).
NEGATIVE_LABELS = frozenset({"negative"})
# Prompts one request may carry: each box is a decoder prompt of its own, so their number
# bounds the work and memory of a request (an annotator sends a few).
MAX_POINTS = 64
MAX_BOXES = 16
# Region types that prompt a segmenting model.
PROMPT_TYPES = ("keypointlabels", "keypoint", "rectanglelabels", "rectangle")
# Controls whose regions a mask answers, in order of preference.
MASK_CONTROLS = ("BrushLabels", "PolygonLabels")


@dataclass(frozen=True)
class Prompts:
    """Pixel prompts on one image: points (N, 2) as (x, y) with ``positive`` (N,) flags, boxes
    (M, 4) as (x0, y0, x1, y1), and the labels picked on positive prompts, in drawing order."""

    points: np.ndarray
    positive: np.ndarray
    boxes: np.ndarray
    labels: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(len(self.points) or len(self.boxes))


def _is_negative(region: ContextRegion) -> bool:
    if region.is_positive is False:
        return True
    labels = region.labels
    return bool(labels) and all(label.strip().lower() in NEGATIVE_LABELS for label in labels)


def _inside(point: tuple[float, float], width: int, height: int) -> tuple[float, float]:
    """A pixel point moved onto the image (a click is on it; a number like 1e40 would
    overflow the model's float32 and come back as a NaN score)."""
    x, y = point
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"the point ({x}, {y}) is not on the image")
    return min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))


def prompts_for(context: Context | None, object_name: str, width: int, height: int) -> Prompts:
    """The points and boxes drawn on the object ``object_name`` (an image of ``width`` x
    ``height`` pixels as decoded), in pixels. Regions on other objects are left out. A region
    whose value is not a usable point or box is a ProtocolError naming it."""
    points: list[tuple[float, float]] = []
    positive: list[bool] = []
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[str] = []
    regions = context.regions(*PROMPT_TYPES) if context is not None else []
    for region in regions:
        if region.to_name not in (None, object_name):
            continue
        name = region.id or region.type
        if region.image_rotation:
            # Where a rotated view's percentages point in the stored image is not settled
            # (PROTOCOL.md); a mask in the wrong place is worse than a clear refusal.
            raise ProtocolError("params.context.result", f"region {name!r} was drawn on an image rotated by {region.image_rotation} degrees; rotate it back to 0")
        negative = _is_negative(region)
        try:
            if region.type.lower().startswith("keypoint"):
                points.append(_inside(coords.keypoint_from_percent(region.value, width, height), width, height))
                positive.append(not negative)
            else:
                x0, y0, x1, y1 = coords.box_xyxy(coords.rect_from_percent(region.value, width, height))
                boxes.append((*_inside((x0, y0), width, height), *_inside((x1, y1), width, height)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("params.context.result", f"region {name!r} is not a usable {region.type}: {exc}") from None
        if not negative:
            labels.extend(region.labels)
    if len(points) > MAX_POINTS or len(boxes) > MAX_BOXES:
        raise ProtocolError(
            "params.context.result", f"{len(points)} points and {len(boxes)} boxes; at most {MAX_POINTS} and {MAX_BOXES} per request"
        )
    return Prompts(
        points=np.asarray(points, dtype=np.float32).reshape(-1, 2),
        positive=np.asarray(positive, dtype=bool),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=tuple(labels),
    )


def mask_control(config: LabelConfig, context: Context | None = None) -> Control:
    """The control a mask answers: a BrushLabels on an Image, else a PolygonLabels; among
    several, one on the image the prompts were drawn on."""
    controls = config.require(MASK_CONTROLS, "Image")
    drawn_on = {r.to_name for r in (context.regions(*PROMPT_TYPES) if context else []) if r.to_name}
    order = [tag.lower() for tag in MASK_CONTROLS]

    def rank(control: Control) -> tuple[bool, int]:
        return bool(drawn_on) and control.object.name not in drawn_on, order.index(control.tag.lower())

    return min(controls, key=rank)


def output_label(control: Control, picked: Sequence[str]) -> str:
    """The label a mask gets: the last label the annotator picked that names one of the
    control's labels (directly or through its ``predicted_values``), else the control's first
    label (the seed's config picks "positive"/"negative" on the points and labels the mask
    "athlete")."""
    mapping = control.label_map()
    for label in reversed(picked):
        if label in mapping:
            return mapping[label]
    if control.label_values:
        return control.label_values[0]
    return picked[-1] if picked else "object"
