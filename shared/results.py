"""Builders for the result dicts Label Studio renders, one per result type, and the prediction
that carries them. Shapes follow what a Label Studio 1.23 server stores and renders; values are
already in percent (see shared.coords) unless a builder says otherwise.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lsfn.shared import coords
from lsfn.shared.masks import mask_to_polygon
from lsfn.shared.rle import mask_to_rle

__all__ = [
    "Result",
    "result_id",
    "rectangle",
    "polygon",
    "brush",
    "brush_rle",
    "mask_region",
    "keypoint",
    "choices",
    "taxonomy",
    "text_span",
    "textarea",
    "video_frame",
    "video_rectangle",
    "prediction",
]

Result = dict[str, Any]

_ID_ALPHABET = string.ascii_letters + string.digits


def result_id() -> str:
    """A 10-character region id of letters and digits, like the ids Label Studio's frontend
    generates."""
    # One random draw mapped to base 62: ten secrets.choice calls cost 30 us a region.
    n = int.from_bytes(secrets.token_bytes(8))
    out = []
    for _ in range(10):
        n, digit = divmod(n, 62)
        out.append(_ID_ALPHABET[digit])
    return "".join(out)


def _labels(labels: str | Sequence[str]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


def _result(
    kind: str,
    from_name: str,
    to_name: str,
    value: dict[str, Any],
    score: float | None,
    size: tuple[int, int] | None,
    id: str | None,
) -> Result:
    out: Result = {"id": id or result_id(), "from_name": from_name, "to_name": to_name, "type": kind}
    if size is not None:
        out["original_width"] = int(size[0])
        out["original_height"] = int(size[1])
        out["image_rotation"] = 0
    out["value"] = value
    if score is not None:
        out["score"] = float(score)
    return out


def rectangle(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    value: dict[str, float],
    *,
    size: tuple[int, int],
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``rectanglelabels`` region; ``value`` is ``{x, y, width, height[, rotation]}`` in
    percent (``shared.coords.rect_to_percent``); ``size`` is the image's (width, height)."""
    box = {k: float(value[k]) for k in ("x", "y", "width", "height")}
    box["rotation"] = float(value.get("rotation", 0.0))
    box["rectanglelabels"] = _labels(labels)
    return _result("rectanglelabels", from_name, to_name, box, score, size, id)


def polygon(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    points: Sequence[Sequence[float]],
    *,
    size: tuple[int, int],
    score: float | None = None,
    closed: bool = True,
    id: str | None = None,
) -> Result:
    """A ``polygonlabels`` region; ``points`` are ``[[x%, y%], ...]``."""
    value = {
        "points": [[float(x), float(y)] for x, y in points],
        "closed": closed,
        "polygonlabels": _labels(labels),
    }
    return _result("polygonlabels", from_name, to_name, value, score, size, id)


def brush(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    mask: np.ndarray,
    *,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``brushlabels`` region from a 2-D mask at the image's size (nonzero = inside)."""
    height, width = np.asarray(mask).shape[:2]
    return brush_rle(
        from_name, to_name, labels, mask_to_rle(mask), size=(width, height), score=score, id=id
    )


def brush_rle(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    rle: list[int],
    *,
    size: tuple[int, int],
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``brushlabels`` region from Label Studio RLE of a ``size`` = (width, height) mask."""
    value = {"format": "rle", "rle": rle, "brushlabels": _labels(labels)}
    return _result("brushlabels", from_name, to_name, value, score, size, id)


def mask_region(
    control_tag: str,
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    mask: np.ndarray,
    *,
    score: float | None = None,
) -> Result | None:
    """A 2-D mask at the image's size as the region its control draws: ``brushlabels`` (RLE)
    for BrushLabels, the simplified outline of its largest part for PolygonLabels (None when
    the mask has no part large enough to outline)."""
    if control_tag.lower() == "brushlabels":
        return brush(from_name, to_name, labels, mask, score=score)
    height, width = mask.shape[:2]
    outline = mask_to_polygon(mask)
    if outline is None:
        return None
    points = coords.polygon_to_percent(outline, width, height)
    return polygon(from_name, to_name, labels, points, size=(width, height), score=score)


def keypoint(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    x: float,
    y: float,
    *,
    size: tuple[int, int],
    point_width: float = 1.0,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``keypointlabels`` region at (x%, y%); ``point_width`` is the drawn size in percent
    of the image width."""
    value = {"x": float(x), "y": float(y), "width": float(point_width), "keypointlabels": _labels(labels)}
    return _result("keypointlabels", from_name, to_name, value, score, size, id)


def choices(
    from_name: str,
    to_name: str,
    selected: str | Sequence[str],
    *,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``choices`` result (classification of the whole object)."""
    return _result("choices", from_name, to_name, {"choices": _labels(selected)}, score, None, id)


def taxonomy(
    from_name: str,
    to_name: str,
    paths: Sequence[Sequence[str]],
    *,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``taxonomy`` result: each selection is a path from a top item down (``[["Animal", "Cat"]]``)."""
    return _result("taxonomy", from_name, to_name, {"taxonomy": [list(p) for p in paths]}, score, None, id)


def text_span(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    start: int,
    end: int,
    text: str,
    *,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``labels`` result: a labelled span ``[start, end)`` of a Text object."""
    value = {"start": int(start), "end": int(end), "text": text, "labels": _labels(labels)}
    return _result("labels", from_name, to_name, value, score, None, id)


def textarea(
    from_name: str,
    to_name: str,
    text: str | Sequence[str],
    *,
    score: float | None = None,
    id: str | None = None,
) -> Result:
    """A ``textarea`` result."""
    return _result("textarea", from_name, to_name, {"text": _labels(text)}, score, None, id)


def video_frame(
    frame: int,
    value: dict[str, float],
    *,
    time: float,
    enabled: bool = True,
) -> dict[str, Any]:
    """One keyframe of a video rectangle: 1-based ``frame``, box in percent, ``time`` in s."""
    return {
        "frame": int(frame),
        "enabled": bool(enabled),
        "rotation": float(value.get("rotation", 0.0)),
        "x": float(value["x"]),
        "y": float(value["y"]),
        "width": float(value["width"]),
        "height": float(value["height"]),
        "time": float(time),
    }


def video_rectangle(
    from_name: str,
    to_name: str,
    labels: str | Sequence[str],
    sequence: Sequence[dict[str, Any]],
    *,
    frames_count: int,
    duration: float,
    score: float | None = None,
    id: str | None = None,
    stride: int = 1,
) -> Result:
    """A ``videorectangle`` track: its keyframes (``video_frame``) in frame order.

    A frame followed by a gap (more than ``stride`` frames: every ``stride``-th frame was
    read) is marked ``enabled: False`` so Label Studio does not interpolate the box across
    frames where the object was not seen; the last frame ends the track.
    """
    frames = sorted((dict(f) for f in sequence), key=lambda f: f["frame"])
    for current, following in zip(frames, frames[1:]):
        if following["frame"] - current["frame"] > stride:
            current["enabled"] = False
    if frames:
        frames[-1]["enabled"] = False
    value = {
        "framesCount": int(frames_count),
        "duration": float(duration),
        "sequence": frames,
        "labels": _labels(labels),
    }
    return _result("videorectangle", from_name, to_name, value, score, None, id)


def prediction(
    results: Iterable[Result],
    *,
    model_version: str | None = None,
    score: float | None = None,
) -> dict[str, Any]:
    """One task's prediction. Without ``score``, the mean of the regions' scores (if any)."""
    items = list(results)
    if score is None:
        scores = [r["score"] for r in items if r.get("score") is not None]
        score = sum(scores) / len(scores) if scores else None
    out: dict[str, Any] = {"result": items}
    if score is not None:
        out["score"] = float(score)
    if model_version is not None:
        out["model_version"] = model_version
    return out
