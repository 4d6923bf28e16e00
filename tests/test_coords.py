"""shared.coords: percent <-> pixels, Label Studio's rotation about the top-left corner."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsfn.shared.coords import (
    PixelRect,
    box_xyxy,
    keypoint_from_percent,
    keypoint_to_percent,
    oriented_size,
    polygon_from_percent,
    polygon_to_percent,
    rect_corners,
    rect_from_center,
    rect_from_corners,
    rect_from_percent,
    rect_to_percent,
)


def test_rectangle_percent_round_trip_matches_captured_value() -> None:
    # The stored prediction captured from Label Studio: 64x48 image, x=10% y=20% w=30% h=40%.
    rect = rect_from_percent({"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0}, 64, 48)
    assert (rect.x, rect.y, rect.width, rect.height) == pytest.approx((6.4, 9.6, 19.2, 19.2))
    assert rect_to_percent(rect, 64, 48) == pytest.approx(
        {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0.0}
    )


def test_boxes_poking_out_of_the_image_are_clamped() -> None:
    value = rect_to_percent(PixelRect(-10, 90, 50, 30), 100, 100)
    assert value == pytest.approx({"x": 0.0, "y": 90.0, "width": 40.0, "height": 10.0, "rotation": 0.0})
    assert rect_to_percent(PixelRect(-10, 90, 50, 30), 100, 100, clamp=False)["x"] == -10.0


def test_rotation_turns_clockwise_about_the_top_left_corner() -> None:
    corners = rect_corners(PixelRect(10, 10, 20, 10, rotation=90))
    np.testing.assert_allclose(corners, [[10, 10], [10, 30], [0, 30], [0, 10]], atol=1e-9)
    corners = rect_corners(PixelRect(0, 0, 10, 10, rotation=45))
    half = 10 / math.sqrt(2)
    np.testing.assert_allclose(corners[1], [half, half], atol=1e-9)  # right edge points down-right


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-500, 500),
    st.floats(-500, 500),
    st.floats(1, 300),
    st.floats(1, 300),
    st.floats(0, 359.9),
    st.integers(0, 3),
    st.booleans(),
)
def test_rect_from_corners_inverts_rect_corners(
    x: float, y: float, w: float, h: float, rotation: float, shift: int, reverse: bool
) -> None:
    corners = rect_corners(PixelRect(x, y, w, h, rotation))
    order = np.roll(np.arange(4), shift)
    if reverse:
        order = order[::-1]
    rect = rect_from_corners(corners[order])
    assert 0.0 <= rect.rotation < 90.0
    # The same rectangle, possibly described from another corner: every corner is matched.
    again = rect_corners(rect)
    distances = np.linalg.norm(again[:, None, :] - corners[None, :, :], axis=2)
    assert np.all(distances.min(axis=1) < 1e-6) and np.all(distances.min(axis=0) < 1e-6)


def test_axis_aligned_corners_give_the_plain_box() -> None:
    rect = rect_from_corners([[30, 20], [30, 60], [10, 60], [10, 20]])  # any start, any winding
    assert (rect.x, rect.y, rect.width, rect.height, rect.rotation) == pytest.approx((10, 20, 20, 40, 0))


def test_oriented_box_from_centre() -> None:
    rect = rect_from_center(50, 50, 40, 20, 0.0)
    assert (rect.x, rect.y, rect.width, rect.height, rect.rotation) == pytest.approx((30, 40, 40, 20, 0))
    rect = rect_from_center(50, 50, 40, 20, math.radians(30))
    centre = rect_corners(rect).mean(axis=0)
    np.testing.assert_allclose(centre, [50, 50], atol=1e-9)
    assert rect.rotation == pytest.approx(30.0)
    assert {round(rect.width, 6), round(rect.height, 6)} == {40.0, 20.0}


def test_box_xyxy_bounds_rotated_rectangles() -> None:
    assert box_xyxy(PixelRect(1, 2, 3, 4)) == (1, 2, 4, 6)
    assert box_xyxy(PixelRect(10, 10, 20, 10, rotation=90)) == pytest.approx((0, 10, 10, 30))


def test_exif_orientation_swaps_displayed_size() -> None:
    assert oriented_size(640, 480, 1) == (640, 480)
    assert oriented_size(640, 480, 3) == (640, 480)
    for orientation in (5, 6, 7, 8):
        assert oriented_size(640, 480, orientation) == (480, 640)
    assert oriented_size(640, 480, None) == (640, 480)


def test_polygons_and_keypoints() -> None:
    pts = polygon_to_percent([[0, 0], [64, 0], [32, 48], [70, -5]], 64, 48)
    np.testing.assert_allclose(pts, [[0, 0], [100, 0], [50, 100], [100, 0]])
    assert isinstance(pts, list) and isinstance(pts[0], list)
    np.testing.assert_allclose(polygon_from_percent([[50, 50], [100, 0]], 64, 48), [[32, 24], [64, 0]])
    # The captured keypoint click: x=25% y=37.5% on a 64x48 image.
    assert keypoint_from_percent({"x": 25.0, "y": 37.5}, 64, 48) == (16.0, 18.0)
    assert keypoint_to_percent(16.0, 18.0, 64, 48) == (25.0, 37.5)
    assert keypoint_to_percent(-3, 100, 64, 48) == (0.0, 100.0)


def test_zero_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        rect_to_percent(PixelRect(0, 0, 1, 1), 0, 10)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"y": 1, "width": 1, "height": 1}, "x"),
        ({"x": None, "y": 1, "width": 1, "height": 1}, "x"),
        ({"x": "3", "y": 1, "width": 1, "height": 1}, "x"),
        ({"x": 1, "y": float("nan"), "width": 1, "height": 1}, "y"),
        ({"x": 1, "y": 1, "width": True, "height": 1}, "width"),
        ({"x": 1, "y": 1, "width": 1, "height": 1, "rotation": "a"}, "rotation"),
    ],
)
def test_malformed_region_values_raise_value_error_naming_the_key(value: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        rect_from_percent(value, 64, 48)


@pytest.mark.parametrize("size", [(0, 48), (64, None), (True, 48), (64, float("inf")), ("64", 48)])
def test_malformed_image_sizes_raise_value_error(size: tuple) -> None:
    with pytest.raises(ValueError, match="image size"):
        keypoint_from_percent({"x": 1, "y": 1}, *size)
