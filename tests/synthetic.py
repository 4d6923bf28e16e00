"""Synthetic images with known contents: filled circles, squares and triangles on noise.

Every shape is drawn from its own ``mask``, so the ground truth (mask, box, polygon) is exact
for the pixels in the image. Coordinates are continuous pixels: pixel ``(x, y)`` covers
``[x, x + 1) x [y, y + 1)`` and belongs to a shape when its centre does.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "KINDS",
    "Shape",
    "make_image",
    "moving_square_frames",
    "png_bytes",
    "write_video",
]

Kind = Literal["circle", "square", "triangle"]
KINDS: tuple[Kind, ...] = ("circle", "square", "triangle")

# Points on a circle's outline polygon: enough for IoU > 0.99 with the disc.
_CIRCLE_POINTS = 32


@dataclass(frozen=True)
class Shape:
    """A filled shape: ``size`` is the diameter (circle), the side (square) or the base and
    height (an upward isosceles triangle); all three fill the box ``size`` wide around
    ``center``."""

    kind: Kind
    center: tuple[float, float]
    size: float
    color: tuple[int, int, int]

    def bbox(self) -> tuple[float, float, float, float]:
        cx, cy = self.center
        half = self.size / 2
        return (cx - half, cy - half, cx + half, cy + half)

    def polygon(self) -> list[tuple[float, float]]:
        cx, cy = self.center
        half = self.size / 2
        if self.kind == "circle":
            step = 2 * math.pi / _CIRCLE_POINTS
            return [
                (cx + half * math.cos(i * step), cy + half * math.sin(i * step))
                for i in range(_CIRCLE_POINTS)
            ]
        if self.kind == "square":
            return [(cx - half, cy - half), (cx + half, cy - half),
                    (cx + half, cy + half), (cx - half, cy + half)]
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]

    def mask(self, h: int, w: int) -> np.ndarray:
        """Boolean ``(h, w)`` array: the pixels whose centres lie inside the shape."""
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        cx, cy = self.center
        half = self.size / 2
        if self.kind == "circle":
            return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
        inside_box = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
        if self.kind == "square":
            return inside_box
        # Apex at the top centre, base at the bottom: the half-width grows linearly downwards.
        return inside_box & (np.abs(xs - cx) <= (ys - (cy - half)) / 2)


def _bright_color(rng: np.random.Generator) -> tuple[int, int, int]:
    # One saturated channel, the others random but bright enough: always far from the dark
    # background, and the colour never tells the class.
    color = rng.integers(90, 256, size=3)
    color[rng.integers(0, 3)] = 255
    return (int(color[0]), int(color[1]), int(color[2]))


def make_image(
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 128),
    shapes: int | tuple[int, int] = (1, 3),
    noise: bool = True,
    kinds: tuple[Kind, ...] = KINDS,
) -> tuple[np.ndarray, list[Shape]]:
    """An ``(h, w, 3)`` uint8 RGB image of ``size = (w, h)`` with non-overlapping filled shapes
    on a dark background, and the shapes. ``shapes`` is a count or an inclusive range."""
    w, h = size
    count = shapes if isinstance(shapes, int) else int(rng.integers(shapes[0], shapes[1] + 1))
    short = min(w, h)
    # Fewer shapes may be larger; the smallest stays well above a detector's stride.
    top = {1: 0.6, 2: 0.42}.get(count, 0.34) * short
    low = min(0.18 * short, top)
    placed: list[Shape] = []
    for _ in range(count):
        for _attempt in range(1000):
            side = float(rng.uniform(low, top))
            half = side / 2
            # Keep one pixel of background around every shape: boxes never touch the border.
            cx = float(rng.uniform(half + 1, w - half - 1))
            cy = float(rng.uniform(half + 1, h - half - 1))
            kind = kinds[int(rng.integers(len(kinds)))]
            candidate = Shape(kind, (cx, cy), side, _bright_color(rng))
            if all(_apart(candidate, other, gap=3) for other in placed):
                placed.append(candidate)
                break
        else:
            raise ValueError(f"cannot place {count} shapes in a {w}x{h} image")
    if noise:
        base = rng.integers(10, 60, size=3)
        field = base + rng.normal(0, 12, size=(h, w, 3))
    else:
        field = np.full((h, w, 3), 30.0)
    for shape in placed:
        field[shape.mask(h, w)] = shape.color
    if noise:
        field += rng.normal(0, 8, size=(h, w, 3))
    return np.clip(np.rint(field), 0, 255).astype(np.uint8), placed


def _apart(a: Shape, b: Shape, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox()
    bx0, by0, bx1, by1 = b.bbox()
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def png_bytes(pixels: np.ndarray) -> bytes:
    """The image (``(h, w, 3)`` RGB or ``(h, w)`` grey uint8) encoded as PNG."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def moving_square_frames(n: int = 20, size: tuple[int, int] = (96, 96)) -> list[np.ndarray]:
    """``n`` RGB frames of one white square sliding left to right over a fixed grey gradient:
    the same object in every frame, for tracking."""
    w, h = size
    side = max(8, min(w, h) // 4)
    gradient = np.linspace(40, 90, w, dtype=np.float64)
    background = np.repeat(np.repeat(gradient[None, :, None], h, axis=0), 3, axis=2)
    frames = []
    for i in range(n):
        x = round(2 + (w - side - 4) * i / max(n - 1, 1))
        y = (h - side) // 2
        frame = background.copy()
        frame[y : y + side, x : x + side] = 240
        frames.append(frame.astype(np.uint8))
    return frames


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write RGB frames as an MPEG-4 (``mp4v``) video, which opencv-python-headless encodes and
    decodes without system codecs."""
    import cv2

    path = Path(path)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
