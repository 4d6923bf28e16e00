"""Masks as Label Studio polygons: the outline of a mask's largest region, simplified.

A model that predicts masks (SAM 2, a segmenter) answers a PolygonLabels control with this.
OpenCV traces and simplifies the outline; it is imported only when a mask is traced, so the
runtime and the front door never load it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_polygon"]


def mask_to_polygon(mask: np.ndarray, tolerance: float = 1.0, min_area: float = 4.0) -> np.ndarray | None:
    """The outline of the largest connected region of a boolean (H, W) mask, as (N, 2) pixel
    points through the centres of its boundary pixels, simplified to within ``tolerance``
    pixels (Douglas-Peucker); None for an empty mask or a region smaller than ``min_area``."""
    import cv2

    if mask.ndim != 2:
        raise ValueError(f"a mask is (height, width), not {mask.shape}")
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if cv2.contourArea(largest) < min_area:
        return None
    points = cv2.approxPolyDP(largest, tolerance, True).reshape(-1, 2).astype(np.float64) + 0.5
    return points if len(points) >= 3 else None
