"""Label Studio annotations read back: one control's regions in an annotation's ``result``, in
pixels of the image as displayed (the inverse of shared.results), for training on them.

A region that cannot be read (no label, a value outside the image, a broken RLE) is skipped and
counted, never guessed: one bad region must not sink a training run, and the count is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsfn.shared import coords
from lsfn.shared.label_config import Control
from lsfn.shared.rle import RLEError, rle_to_mask

__all__ = ["AnnotatedRegions", "Box", "Outline", "read_regions"]


@dataclass(frozen=True)
class Box:
    """A rectangle: its label and its pixel rectangle (rotation clockwise, degrees)."""

    label: str
    rect: coords.PixelRect


@dataclass(frozen=True)
class Outline:
    """An object's outline as (N, 2) pixel points: a polygon as drawn, or a brush mask traced."""

    label: str
    points: np.ndarray


@dataclass
class AnnotatedRegions:
    """What one annotation says for one control: boxes, outlines, chosen classes."""

    boxes: list[Box] = field(default_factory=list)
    outlines: list[Outline] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    skipped: int = 0  # regions of the control that could not be read

    @property
    def empty(self) -> bool:
        return not (self.boxes or self.outlines or self.choices)


def _label(value: Mapping[str, Any], key: str) -> str | None:
    labels = value.get(key)
    return labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None


def read_regions(result: Sequence[Any], control: Control, width: int, height: int) -> AnnotatedRegions:
    """The regions of ``control`` in an annotation's ``result`` on a ``width`` x ``height`` image."""
    out = AnnotatedRegions()
    kind = control.tag.lower()
    for item in result:
        if not isinstance(item, dict) or item.get("from_name") != control.name or not isinstance(item.get("value"), dict):
            continue
        value = item["value"]
        try:
            if kind == "choices":
                chosen = value.get("choices")
                out.choices.extend(c for c in chosen or [] if isinstance(c, str))
                continue
            label = _label(value, kind)
            if label is None:
                out.skipped += 1
                continue
            if kind == "rectanglelabels":
                rect = coords.rect_from_percent(value, width, height)
                if rect.width <= 0 or rect.height <= 0:
                    raise ValueError("an empty rectangle")
                out.boxes.append(Box(label, rect))
            elif kind == "polygonlabels":
                points = coords.polygon_from_percent(value.get("points") or [], width, height)
                if len(points) < 3:
                    raise ValueError("a polygon of fewer than 3 points")
                out.outlines.append(Outline(label, points))
            elif kind == "brushlabels":
                out.outlines.extend(Outline(label, points) for points in _brush_outlines(value, item, width, height))
        except (ValueError, TypeError, KeyError, RLEError):
            out.skipped += 1
    return out


def _brush_outlines(value: Mapping[str, Any], item: Mapping[str, Any], width: int, height: int) -> list[np.ndarray]:
    """Each connected part of a brush mask, traced (a stroke may paint several objects)."""
    import cv2

    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise ValueError("a brush region without an RLE")
    # The RLE is of the image as Label Studio stored it: its own size, said in the region.
    mask_w, mask_h = int(item.get("original_width") or width), int(item.get("original_height") or height)
    mask = rle_to_mask(value["rle"], mask_h, mask_w) > 0
    if (mask_w, mask_h) != (width, height):
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = [c.reshape(-1, 2).astype(np.float64) + 0.5 for c in contours if cv2.contourArea(c) >= 4.0]
    if not outlines:
        raise ValueError("an empty brush mask")
    return [points for points in outlines if len(points) >= 3]
