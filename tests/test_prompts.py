"""shared.prompts: the interactive context's clicks and boxes as pixel prompts, the control a
mask answers and the label it carries; shared.results.mask_region: a mask as that control's
region."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from lsfn.shared import results
from lsfn.shared.label_config import LabelConfigError, parse_label_config
from lsfn.shared.prompts import MAX_BOXES, MAX_POINTS, mask_control, output_label, prompts_for
from lsfn.shared.protocol import Context, ProtocolError

SIZE = (200, 100)


def region(kind: str, value: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": kind, "value": value, "from_name": "kp", "to_name": "image", "original_width": 200,
            "original_height": 100, **extra}  # fmt: skip


def context(*regions: dict[str, Any]) -> Context:
    return Context.model_validate({"result": list(regions)})


def test_points_and_boxes_in_pixels_with_their_sign() -> None:
    ctx = context(
        region("keypointlabels", {"x": 50, "y": 25, "keypointlabels": ["Cat"]}, is_positive=True),
        region("keypointlabels", {"x": 10, "y": 10, "keypointlabels": ["Cat"]}, is_positive=False),
        region("keypointlabels", {"x": 20, "y": 80, "keypointlabels": ["negative"]}),  # by its label
        region("keypointlabels", {"x": 30, "y": 30, "keypointlabels": ["Dog"]}),  # no flag: positive
        region("rectanglelabels", {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["Dog"]}),
        region("keypointlabels", {"x": 99, "y": 99, "keypointlabels": ["Cat"]}, to_name="other_image"),
        region("textarea", {"text": ["a cat"]}),
    )
    prompts = prompts_for(ctx, "image", *SIZE)
    assert prompts.points.tolist() == [[100, 25], [20, 10], [40, 80], [60, 30]]
    assert prompts.positive.tolist() == [True, False, False, True]
    assert prompts.boxes.tolist() == [[20, 20, 120, 60]]
    assert prompts.labels == ("Cat", "Dog", "Dog")  # from positive prompts, in drawing order


def test_a_rotated_box_becomes_the_box_around_it() -> None:
    ctx = context(region("rectanglelabels", {"x": 50, "y": 50, "width": 10, "height": 20, "rotation": 90}))
    (x0, y0, x1, y1), = prompts_for(ctx, "image", 100, 100).boxes.tolist()  # fmt: skip
    # Rotated 90 degrees clockwise about its top-left corner (50, 50): 20 wide, 10 tall.
    assert (x0, y0, x1, y1) == pytest.approx((30, 50, 50, 60))


def test_far_away_points_land_on_the_edge_and_too_many_prompts_are_refused() -> None:
    ctx = context(
        region("keypointlabels", {"x": 1e40, "y": -5}),
        region("rectanglelabels", {"x": -10, "y": 50, "width": 1e6, "height": 10, "rotation": 0}),
    )
    prompts = prompts_for(ctx, "image", *SIZE)
    assert prompts.points.tolist() == [[200, 0]] and prompts.boxes.tolist() == [[0, 50, 200, 60]]
    with pytest.raises(ProtocolError, match="not on the image"):
        prompts_for(context(region("rectanglelabels", {"x": 1, "y": 1, "width": 1e308, "height": 1})), "image", *SIZE)
    many = [region("keypointlabels", {"x": 1, "y": 1})] * (MAX_POINTS + 1)
    with pytest.raises(ProtocolError, match="at most 64"):
        prompts_for(context(*many), "image", *SIZE)
    boxes = [region("rectanglelabels", {"x": 1, "y": 1, "width": 5, "height": 5})] * (MAX_BOXES + 1)
    with pytest.raises(ProtocolError, match="17 boxes"):
        prompts_for(context(*boxes), "image", *SIZE)


def test_a_rotated_image_is_refused() -> None:
    with pytest.raises(ProtocolError, match="rotated by 90"):
        prompts_for(context(region("keypointlabels", {"x": 1, "y": 1}, image_rotation=90)), "image", *SIZE)


def test_no_prompts() -> None:
    assert not prompts_for(None, "image", *SIZE)
    assert not prompts_for(context(region("textarea", {"text": ["x"]})), "image", *SIZE)


def test_an_unusable_region_is_named() -> None:
    with pytest.raises(ProtocolError, match="'kp7'"):
        prompts_for(context(region("keypointlabels", {"x": 5}, id="kp7")), "image", *SIZE)
    with pytest.raises(ProtocolError, match="rectanglelabels"):
        prompts_for(context(region("rectanglelabels", {"x": 5, "y": 5, "width": "wide", "height": 3})), "image", *SIZE)


CONFIG = """<View>
  <Image name="a" value="$a"/><Image name="b" value="$b"/>
  <PolygonLabels name="poly_a" toName="a"><Label value="Cat"/></PolygonLabels>
  <BrushLabels name="brush_b" toName="b"><Label value="Feline" predicted_values="Cat,kitty"/><Label value="Dog"/></BrushLabels>
  <KeyPointLabels name="kp" toName="a" smart="true"><Label value="Cat"/></KeyPointLabels>
</View>"""


def test_the_mask_control_prefers_brush_and_the_image_drawn_on() -> None:
    config = parse_label_config(CONFIG)
    assert mask_control(config).name == "brush_b"  # brush first when nothing says which image
    on_a = context(region("keypointlabels", {"x": 1, "y": 1}, to_name="a"))
    assert mask_control(config, on_a).name == "poly_a"
    with pytest.raises(LabelConfigError, match="BrushLabels or PolygonLabels"):
        mask_control(parse_label_config('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>'))


def test_the_output_label() -> None:
    brush = parse_label_config(CONFIG).control("brush_b")
    assert output_label(brush, ["Dog"]) == "Dog"
    assert output_label(brush, ["kitty"]) == "Feline"  # through predicted_values
    assert output_label(brush, ["Dog", "Cat"]) == "Feline"  # the last one picked
    assert output_label(brush, ["positive"]) == "Feline"  # not a mask label: the first label
    assert output_label(brush, []) == "Feline"


def test_mask_region_as_brush_or_polygon() -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 20:50] = True
    brush = results.mask_region("BrushLabels", "m", "image", "Cat", mask, score=0.5)
    assert brush["type"] == "brushlabels" and brush["score"] == 0.5
    decoded = decode_rle(brush["value"]["rle"]).reshape(40, 60, 4)[:, :, 3] > 0
    assert (decoded == mask).all()
    polygon = results.mask_region("PolygonLabels", "m", "image", ["Cat"], mask)
    assert polygon["type"] == "polygonlabels" and polygon["value"]["polygonlabels"] == ["Cat"]
    xs = sorted({round(x * 60 / 100, 3) for x, _ in polygon["value"]["points"]})
    ys = sorted({round(y * 40 / 100, 3) for _, y in polygon["value"]["points"]})
    assert (xs, ys) == ([20.5, 49.5], [10.5, 29.5])  # the centres of the corner pixels
    assert results.mask_region("PolygonLabels", "m", "image", "Cat", np.zeros((40, 60), dtype=bool)) is None
