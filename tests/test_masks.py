"""shared.masks: a mask's largest region as a polygon."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lsfn.shared.masks import mask_to_polygon


def rasterize(points: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = Image.new("1", (width, height))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_square_is_four_corners_on_its_outline() -> None:
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:50, 20:60] = True
    points = mask_to_polygon(mask)
    assert points is not None and len(points) == 4
    assert sorted(map(tuple, points.round(1).tolist())) == [(20.5, 10.5), (20.5, 49.5), (59.5, 10.5), (59.5, 49.5)]
    assert iou(rasterize(points, 60, 80), mask) > 0.9


def test_the_largest_region_is_traced_and_a_disc_stays_round() -> None:
    ys, xs = np.mgrid[0:120, 0:160]
    disc = (xs - 100) ** 2 + (ys - 60) ** 2 <= 35**2
    speck = np.zeros_like(disc)
    speck[5:10, 5:10] = True
    points = mask_to_polygon(disc | speck)
    assert points is not None and 8 <= len(points) <= 80
    assert iou(rasterize(points, 120, 160), disc) > 0.95
    assert points[:, 0].min() > 60  # the speck at the left is not part of it


@pytest.mark.parametrize("mask", [np.zeros((10, 10), bool), np.eye(10, dtype=bool)[:1]])
def test_empty_or_tiny_masks_have_no_polygon(mask: np.ndarray) -> None:
    assert mask_to_polygon(mask) is None


def test_only_two_dimensional_masks() -> None:
    with pytest.raises(ValueError, match="height, width"):
        mask_to_polygon(np.zeros((4, 4, 3), bool))
