"""shared.results: the result dicts Label Studio stores, validated by label-studio-sdk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter import brush as sdk_brush
from label_studio_sdk.label_interface import LabelInterface

from lsfn.shared import results as R
from lsfn.shared.coords import PixelRect, polygon_to_percent, rect_to_percent
from tests import configs

DATA = Path(__file__).parent / "data" / "ls-1.23"
SIZE = (64, 48)

POLYGON_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image"><Label value="Cat"/></PolygonLabels>
  <Choices name="cls" toName="image"><Choice value="indoor"/><Choice value="outdoor"/></Choices>
</View>"""


def test_rectangle_has_the_shape_label_studio_stored() -> None:
    stored = json.loads((DATA / "drive-batch-00-normal-stored.json").read_text())["1"][0]["result"][0]
    value = rect_to_percent(PixelRect(6.4, 9.6, 19.2, 19.2), *SIZE)
    ours = R.rectangle("label", "image", "Cat", value, size=SIZE, score=0.8, id="cap0")
    assert ours.keys() == stored.keys()
    assert ours["value"].keys() == stored["value"].keys()
    numbers = {k: v for k, v in stored["value"].items() if k != "rectanglelabels"}
    assert {k: ours["value"][k] for k in numbers} == pytest.approx(numbers)
    assert ours["value"]["rectanglelabels"] == stored["value"]["rectanglelabels"] == ["Cat"]
    for key in ("from_name", "to_name", "type", "original_width", "original_height", "image_rotation", "score"):
        assert ours[key] == stored[key]


def test_interactive_config_results_validate_with_the_sdk() -> None:
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:30] = True
    results = [
        R.rectangle("label", "image", "Cat", {"x": 1, "y": 2, "width": 3, "height": 4, "rotation": 30}, size=SIZE),
        R.keypoint("kp", "image", "Dog", 25.0, 37.5, size=SIZE, point_width=0.625, score=0.7),
        R.brush("brush", "image", "Cat", mask, score=0.9),
        R.textarea("prompt", "image", "a red square"),
    ]
    pred = R.prediction(results, model_version="sam2-tiny-abc123")
    assert LabelInterface(configs.CAPTURED_INTERACTIVE).validate_prediction(pred)
    assert pred["score"] == pytest.approx(0.8)  # mean of the scored regions
    assert pred["model_version"] == "sam2-tiny-abc123"
    assert results[1]["value"] == {"x": 25.0, "y": 37.5, "width": 0.625, "keypointlabels": ["Dog"]}
    assert results[0]["value"]["rotation"] == 30.0


def test_sdk_rejects_what_label_studio_would_not_render() -> None:
    interface = LabelInterface(configs.CAPTURED_INTERACTIVE)
    value = {"x": 1, "y": 2, "width": 3, "height": 4}
    assert not interface.validate_prediction(R.prediction([R.rectangle("label", "image", "Horse", value, size=SIZE)]))
    assert not interface.validate_prediction(R.prediction([R.rectangle("nope", "image", "Cat", value, size=SIZE)]))


def test_brush_rle_decodes_to_the_mask_with_the_sdk() -> None:
    mask = np.zeros((48, 64), np.uint8)
    mask[5:40, 7:9] = 3
    result = R.brush("brush", "image", ["Dog"], mask)
    assert result["value"]["format"] == "rle" and result["value"]["brushlabels"] == ["Dog"]
    assert (result["original_width"], result["original_height"]) == SIZE
    layer = sdk_brush.decode_rle(result["value"]["rle"]).reshape(48, 64, 4)[:, :, 3]
    np.testing.assert_array_equal(layer, (mask != 0) * 255)


def test_polygon_and_choices_validate() -> None:
    points = polygon_to_percent([[0, 0], [32, 0], [32, 24]], *SIZE)
    results = [
        R.polygon("poly", "image", "Cat", points, size=SIZE, score=0.4),
        R.choices("cls", "image", ["outdoor"], score=0.6),
    ]
    assert LabelInterface(POLYGON_CONFIG).validate_prediction(R.prediction(results))
    assert results[0]["value"]["points"] == [[0.0, 0.0], [50.0, 0.0], [50.0, 50.0]]
    assert results[1]["value"] == {"choices": ["outdoor"]}
    assert "original_width" not in results[1]


def test_text_span_and_video_track() -> None:
    span = R.text_span("ner", "text", "PER", 0, 5, "Alice", score=0.9)
    assert span["value"] == {"start": 0, "end": 5, "text": "Alice", "labels": ["PER"]}
    frames = [
        R.video_frame(3, {"x": 1, "y": 1, "width": 5, "height": 5}, time=0.12),
        R.video_frame(1, {"x": 0, "y": 0, "width": 5, "height": 5}, time=0.04),
        R.video_frame(2, {"x": 0.5, "y": 0.5, "width": 5, "height": 5}, time=0.08),
        R.video_frame(7, {"x": 9, "y": 9, "width": 5, "height": 5}, time=0.28),
    ]
    track = R.video_rectangle("box", "video", "Man", frames, frames_count=10, duration=0.4, score=0.8)
    assert track["type"] == "videorectangle"
    value = track["value"]
    assert value["framesCount"] == 10 and value["duration"] == 0.4 and value["labels"] == ["Man"]
    assert [f["frame"] for f in value["sequence"]] == [1, 2, 3, 7]
    # Enabled until the gap after frame 3; the last keyframe ends the track.
    assert [f["enabled"] for f in value["sequence"]] == [True, True, False, False]
    assert frames[0]["enabled"] is True  # the caller's keyframes are not modified
    assert LabelInterface(configs.MIXED).validate_prediction(R.prediction([span, track]))


def test_prediction_without_scores_or_version_leaves_them_out() -> None:
    pred = R.prediction([R.textarea("prompt", "image", ["x"])])
    assert pred == {"result": [pred["result"][0]]}
    assert R.prediction([], score=0.0, model_version="v")["score"] == 0.0


def test_result_ids_are_unique_and_ten_characters() -> None:
    ids = {R.result_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 10 and i.isalnum() for i in ids)


def test_taxonomy_validates() -> None:
    config = """<View><Image name="image" value="$image"/>
      <Taxonomy name="tax" toName="image"><Choice value="Animal"><Choice value="Cat"/></Choice><Choice value="Car"/></Taxonomy>
    </View>"""
    result = R.taxonomy("tax", "image", [["Animal", "Cat"], ["Car"]], score=0.7)
    assert result["type"] == "taxonomy" and result["value"] == {"taxonomy": [["Animal", "Cat"], ["Car"]]}
    assert LabelInterface(config).validate_prediction(R.prediction([result]))
