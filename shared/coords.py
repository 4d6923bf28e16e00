"""Pixel <-> percent coordinates as Label Studio uses them.

Every region value is in percent of the image as displayed, that is after EXIF orientation:
x and widths in percent of the width, y and heights in percent of the height. A rectangle's
``rotation`` is in degrees, clockwise on screen, about its top-left corner ``(x, y)``; width and
height are measured along the rotated edges. Keypoints carry their size in ``width`` (percent of
the image width). Pixel coordinates here are floats with the origin at the top-left corner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PixelRect",
    "oriented_size",
    "rect_to_percent",
    "rect_from_percent",
    "rect_corners",
    "rect_from_corners",
    "rect_from_center",
    "box_xyxy",
    "polygon_to_percent",
    "polygon_from_percent",
    "keypoint_to_percent",
    "keypoint_from_percent",
]

# EXIF orientations 5-8 turn the image by 90 degrees: displayed width and height swap.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class PixelRect:
    """A rectangle in pixels: top-left corner, size along its edges, clockwise rotation (deg)."""

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0


def oriented_size(width: int, height: int, orientation: int | None = 1) -> tuple[int, int]:
    """The displayed (width, height) of an image stored as ``width x height`` with this EXIF
    orientation tag (1-8): Label Studio's percentages refer to the displayed size."""
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _is_finite_number(n: object) -> bool:
    return isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n)


def _check_size(width: float, height: float) -> None:
    if not all(_is_finite_number(n) and n > 0 for n in (width, height)):
        raise ValueError(f"image size must be positive, got {width}x{height}")


def _number(value: Mapping[str, Any], key: str, default: float | None = None) -> float:
    """A numeric field of a region value; a client's malformed value is a ValueError naming it."""
    raw = value.get(key, default) if isinstance(value, Mapping) else None
    if raw is None:
        raw = default
    if not _is_finite_number(raw):
        raise ValueError(f"region value needs a finite number in '{key}', got {raw!r}")
    return float(raw)


def _clip(value: float, low: float = 0.0, high: float = 100.0) -> float:
    return min(max(value, low), high)


def rect_to_percent(
    rect: PixelRect, width: int, height: int, clamp: bool = True
) -> dict[str, float]:
    """A pixel rectangle as Label Studio's ``{x, y, width, height, rotation}`` in percent.

    With ``clamp``, an unrotated rectangle is cut to the image (a detector's box may poke out);
    rotated rectangles are kept as they are, since cutting would change their shape.
    """
    _check_size(width, height)
    x = rect.x * 100.0 / width
    y = rect.y * 100.0 / height
    w = rect.width * 100.0 / width
    h = rect.height * 100.0 / height
    rotation = rect.rotation % 360.0
    if clamp and rotation == 0.0:
        x2, y2 = _clip(x + w), _clip(y + h)
        x, y = _clip(x), _clip(y)
        w, h = max(x2 - x, 0.0), max(y2 - y, 0.0)
    return {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}


def rect_from_percent(value: Mapping[str, Any], width: int, height: int) -> PixelRect:
    """A Label Studio rectangle value (percent) in pixels."""
    _check_size(width, height)
    return PixelRect(
        x=_number(value, "x") * width / 100.0,
        y=_number(value, "y") * height / 100.0,
        width=_number(value, "width") * width / 100.0,
        height=_number(value, "height") * height / 100.0,
        rotation=_number(value, "rotation", 0.0),
    )


def rect_corners(rect: PixelRect) -> np.ndarray:
    """The four pixel corners (4, 2) of a rectangle, clockwise from its top-left corner."""
    theta = math.radians(rect.rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # Image y points down, so this matrix turns clockwise on screen for a positive angle.
    local = np.array([[0.0, 0.0], [rect.width, 0.0], [rect.width, rect.height], [0.0, rect.height]])
    turn = np.array([[cos, -sin], [sin, cos]])
    return local @ turn.T + np.array([rect.x, rect.y])


def rect_from_corners(corners: Sequence[Sequence[float]] | np.ndarray) -> PixelRect:
    """The rectangle through four corners given in order around it (an oriented box, as
    ultralytics' ``xyxyxyxy``), in Label Studio's form.

    Either winding order is accepted. The corner that serves as the top-left one is chosen so
    the rotation lies in [0, 90) degrees, which keeps the value stable for axis-aligned boxes
    (rotation 0, the usual top-left corner).
    """
    pts = np.asarray(corners, dtype=np.float64).reshape(4, 2)
    edge, other = pts[1] - pts[0], pts[3] - pts[0]
    if edge[0] * other[1] - edge[1] * other[0] < 0:  # counter-clockwise on screen: reverse it
        pts = pts[[0, 3, 2, 1]]
    # Going clockwise, the edge directions are a, a+90, a+180, a+270: one lies in [0, 90).
    nxt = np.roll(pts, -1, axis=0)
    angles = np.degrees(np.arctan2(nxt[:, 1] - pts[:, 1], nxt[:, 0] - pts[:, 0])) % 360.0
    angles[angles > 360.0 - 1e-9] = 0.0
    start = int(np.argmin(angles))
    p0, p1, p3 = pts[start], pts[(start + 1) % 4], pts[(start + 3) % 4]
    return PixelRect(
        x=float(p0[0]),
        y=float(p0[1]),
        width=float(np.hypot(*(p1 - p0))),
        height=float(np.hypot(*(p3 - p0))),
        rotation=float(angles[start]),
    )


def rect_from_center(cx: float, cy: float, width: float, height: float, angle: float) -> PixelRect:
    """An oriented box given by its centre, size and clockwise angle in radians (ultralytics'
    ``xywhr``), as a Label Studio rectangle."""
    cos, sin = math.cos(angle), math.sin(angle)
    hw, hh = width / 2.0, height / 2.0
    corners = [
        (cx + dx * cos - dy * sin, cy + dx * sin + dy * cos)
        for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
    ]
    return rect_from_corners(corners)


def box_xyxy(rect: PixelRect) -> tuple[float, float, float, float]:
    """The axis-aligned pixel box (x1, y1, x2, y2) around a possibly rotated rectangle, as a
    box prompt for SAM."""
    if rect.rotation % 360.0 == 0.0:
        return rect.x, rect.y, rect.x + rect.width, rect.y + rect.height
    pts = rect_corners(rect)
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def polygon_to_percent(
    points: Sequence[Sequence[float]] | np.ndarray, width: int, height: int, clamp: bool = True
) -> list[list[float]]:
    """Pixel polygon points (N, 2) as Label Studio's ``[[x%, y%], ...]``."""
    _check_size(width, height)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) * (100.0 / np.array([width, height]))
    if clamp:
        pts = np.clip(pts, 0.0, 100.0)
    return pts.tolist()


def polygon_from_percent(points: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """Label Studio polygon points in pixels, as an (N, 2) float array."""
    _check_size(width, height)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2) * (np.array([width, height]) / 100.0)


def keypoint_to_percent(
    x: float, y: float, width: int, height: int, clamp: bool = True
) -> tuple[float, float]:
    """A pixel point as percent (x%, y%)."""
    _check_size(width, height)
    px, py = x * 100.0 / width, y * 100.0 / height
    return (_clip(px), _clip(py)) if clamp else (px, py)


def keypoint_from_percent(value: Mapping[str, Any], width: int, height: int) -> tuple[float, float]:
    """A Label Studio keypoint value in pixels (x, y)."""
    _check_size(width, height)
    return _number(value, "x") * width / 100.0, _number(value, "y") * height / 100.0
