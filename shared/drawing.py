"""What a function answered, drawn on the image it answered for (`lsfn try`): rectangles (rotated
as Label Studio rotates them), polygons, brush masks decoded from their RLE, keypoints, each
with its label and score, and a legend of the labels' colours. Pillow does the drawing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lsfn.shared import coords
from lsfn.shared.rle import rle_to_mask

__all__ = ["draw_regions", "label_colour"]

_MASK_ALPHA = 0.45  # how much of a brush mask's colour covers the image under it
_LEGEND_ROW = 14


def label_colour(label: str) -> tuple[int, int, int]:
    """A saturated colour of its own for each label, the same in every picture."""
    digest = hashlib.sha256(label.encode()).digest()
    hue = digest[0] / 255.0
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _label(region: dict[str, Any]) -> str:
    value = region.get("value") or {}
    for key, labels in value.items():
        if key.endswith("labels") and isinstance(labels, list) and labels:
            return str(labels[0])
    return str(region.get("type", "region"))


def _caption(region: dict[str, Any]) -> str:
    score = region.get("score")
    return _label(region) + (f" {score:.2f}" if isinstance(score, (int, float)) else "")


def draw_regions(pixels: np.ndarray, regions: Sequence[dict[str, Any]]) -> Image.Image:
    """The image (RGB, as the function decoded it) with the regions drawn on it, and a legend."""
    height, width = pixels.shape[:2]
    base = pixels.astype(np.float32)
    # Masks first, blended into the pixels: outlines and text go on top.
    for region in regions:
        value = region.get("value") or {}
        if region.get("type") == "brushlabels" and value.get("format") == "rle":
            mask = rle_to_mask(list(value["rle"]), height, width) > 127
            colour = np.array(label_colour(_label(region)), dtype=np.float32)
            base[mask] = base[mask] * (1 - _MASK_ALPHA) + colour * _MASK_ALPHA
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    labels: dict[str, tuple[int, int, int]] = {}
    for region in regions:
        kind, value = region.get("type"), region.get("value") or {}
        label = _label(region)
        colour = labels.setdefault(label, label_colour(label))
        anchor: tuple[float, float] | None = None
        if kind == "rectanglelabels":
            corners = coords.rect_corners(coords.rect_from_percent(value, width, height))
            draw.polygon([tuple(c) for c in corners], outline=colour, width=2)
            anchor = tuple(corners[0])
        elif kind == "polygonlabels":
            points = coords.polygon_from_percent(value.get("points") or [], width, height)
            if len(points) >= 2:
                draw.polygon([tuple(p) for p in points], outline=colour, width=2)
                anchor = tuple(points[0])
        elif kind == "keypointlabels":
            x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
            radius = max(3.0, (value.get("width") or 1.0) * width / 200.0)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(0, 0, 0))
            anchor = (x + radius, y - radius)
        elif kind == "brushlabels" and value.get("format") == "rle":
            ys, xs = np.nonzero(rle_to_mask(list(value["rle"]), height, width) > 127)
            anchor = (float(xs.min()), float(ys.min())) if len(xs) else None
        if anchor is not None:
            draw.text((anchor[0] + 2, max(anchor[1] - 12, 0)), _caption(region), fill=colour, font=font)
    # The legend: one row per label, top left, on a dark band so it reads on any image.
    if labels:
        band = Image.new("RGB", (width, _LEGEND_ROW * len(labels) + 4), (20, 20, 20))
        legend = ImageDraw.Draw(band)
        for row, (label, colour) in enumerate(sorted(labels.items())):
            top = 2 + row * _LEGEND_ROW
            legend.rectangle([4, top + 2, 14, top + 12], fill=colour)
            legend.text((20, top), label, fill=(240, 240, 240), font=font)
        framed = Image.new("RGB", (width, height + band.height))
        framed.paste(image, (0, 0))
        framed.paste(band, (0, height))
        image = framed
    return image
