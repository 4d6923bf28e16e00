"""shared.label_config, checked against label-studio-sdk's LabelInterface on real configs."""

from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from lsfn.shared.label_config import LabelConfigError, parse_label_config
from tests import configs


@pytest.mark.parametrize("name", sorted(configs.ALL))
def test_controls_match_label_interface(name: str) -> None:
    xml = configs.ALL[name]
    ours = parse_label_config(xml)
    ref = LabelInterface(xml)
    assert [c.name for c in ours.controls] == [c.name for c in ref.controls]
    for control in ours.controls:
        other = ref.get_control(control.name)
        assert control.tag == other.tag
        assert list(control.to_name) == list(other.to_name)
        assert list(control.label_values) == list(other.labels)
        assert dict(control.attrs) == dict(other.attr)
        for label in control.labels:
            assert dict(label.attrs) == dict(other.labels_attrs[label.value].attr)
        ref_object = ref.get_object(control.to_name[0])
        assert control.object.tag == ref_object.tag
        assert control.value_key == ref_object.value_name
    assert sorted(ours.objects) == sorted(o.name for o in ref.objects)


def test_yolo_attributes() -> None:
    control = parse_label_config(configs.YOLO_RECT).control("label")
    assert control.model_path == "yolov8m.pt"
    assert control.model_score_threshold == pytest.approx(0.3)
    assert control.value_key == "image"
    assert control.label("Car").predicted_values == ("car", "truck")
    assert control.model_skip is False


def test_label_map_follows_label_studio_ml_backend() -> None:
    control = parse_label_config(configs.YOLO_RECT).control("label")
    model = ["person", "car", "truck", "airplane", "dog", "BUS"]
    assert control.label_map(model) == {
        "person": "athlete",  # predicted_values, "player" is not a model class
        "car": "Car",
        "truck": "Car",
        "airplane": "Airplane",  # same name, other case
        "BUS": "Bus",
    }
    assert control.label_for("dog", model) is None  # maps to no label: dropped
    assert control.label_for("truck", model) == "Car"


def test_label_map_without_model_names_is_open_vocabulary() -> None:
    control = parse_label_config(configs.YOLO_RECT).control("label")
    assert control.label_map() == {
        "person": "athlete",
        "player": "athlete",
        "car": "Car",
        "truck": "Car",
        "Airplane": "Airplane",
        "Bus": "Bus",
    }


def test_predicted_values_that_match_nothing_fall_back_to_the_label_name() -> None:
    control = parse_label_config(configs.YOLO_RECT).control("label")
    assert control.label_map(["Car"]) == {"Car": "Car"}


def test_find_by_control_and_object_type() -> None:
    config = parse_label_config(configs.MIXED)
    assert [c.name for c in config.find("Labels")] == ["videoLabels", "ner"]
    assert [c.name for c in config.find("labels", "Text")] == ["ner"]
    assert [c.name for c in config.find(("KeyPointLabels", "RectangleLabels"), "Image")] == ["pose", "obb"]
    assert [c.name for c in config.find(object_type="Video")] == ["videoLabels", "box"]
    assert config.first("BrushLabels") is None
    with pytest.raises(LabelConfigError, match="needs a BrushLabels control bound to Image"):
        config.require("BrushLabels", "Image")


def test_interactive_inputs_and_outputs() -> None:
    config = parse_label_config(configs.CAPTURED_INTERACTIVE)
    assert config.control("kp").smart and config.control("label").smart
    assert not config.control("brush").smart
    assert config.first("TextArea").get("maxSubmissions") == "1"
    sam = parse_label_config(configs.SAM2)
    assert sam.control("kp").label_values == ("positive", "negative")
    grounding = parse_label_config(configs.GROUNDING_SAM)
    assert grounding.first("TextArea", "Image").name == "prompt"  # nested in a View
    assert grounding.first("BrushLabels").label_values == ("athlete", "referee")


def test_attributes_of_mixed_controls() -> None:
    config = parse_label_config(configs.MIXED)
    box = config.control("box")
    assert box.labels == ()
    assert [label.value for label in config.labels_for(box)] == ["Man", "Car"]
    assert config.labels_for(box)[0].predicted_values == ("person",)
    assert box.get("model_tracker") == "bytetrack" and box.get_float("model_conf") == 0.25
    assert box.object.tag == "Video" and box.value_key == "video"
    kind = config.control("kind")
    assert kind.label_values == ("Indoor", "Outdoor")  # a Choice nested in a View counts
    assert kind.get("choice") == "multiple" and not kind.model_skip
    pose = config.control("pose")
    assert [label.get("model_index") for label in pose.labels] == ["0", "1"]
    assert pose.get_bool("model_add_bboxes") and pose.get_float("model_point_threshold") == 0.4
    assert config.control("obb").model_skip and config.control("obb").get_bool("model_obb")


def test_missing_threshold_is_none_and_legacy_name_is_read() -> None:
    config = parse_label_config(
        '<View><Image name="i" value="$img"/>'
        '<RectangleLabels name="a" toName="i" score_threshold="0.7"><Label value="x"/></RectangleLabels>'
        '<RectangleLabels name="b" toName="i"><Label value="x"/></RectangleLabels></View>'
    )
    assert config.control("a").model_score_threshold == pytest.approx(0.7)
    assert config.control("b").model_score_threshold is None
    assert config.control("b").model_path is None


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("<View><Image name='i' value='$i'>", "not valid XML"),
        ("<View><RectangleLabels name='r' toName='nothing'/></View>", "names no object"),
        (
            "<View><Image name='i' value='$i'/><Choices name='c' toName='i'/><Choices name='c' toName='i'/></View>",
            'two controls are named "c"',
        ),
        (
            "<!DOCTYPE v [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><View>&b;</View>",
            "not valid XML",
        ),
        ("<!DOCTYPE v [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><View>&x;</View>", "not valid XML"),
    ],
)
def test_invalid_configs_raise_a_typed_error(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_bad_attribute_values_name_the_control_and_attribute() -> None:
    config = parse_label_config(
        '<View><Image name="i" value="$i"/>'
        '<RectangleLabels name="r" toName="i" model_score_threshold="high" model_obb="maybe"/></View>'
    )
    control = config.control("r")
    with pytest.raises(LabelConfigError, match='RectangleLabels "r": model_score_threshold="high"'):
        _ = control.model_score_threshold
    with pytest.raises(LabelConfigError, match='model_obb="maybe" is not a boolean'):
        control.get_bool("model_obb")
    with pytest.raises(LabelConfigError, match='no control named "x"'):
        config.control("x")


@pytest.mark.parametrize("value", [None, b"<View/>", 3])
def test_non_string_config_is_a_typed_error(value: object) -> None:
    with pytest.raises(LabelConfigError, match="must be a string"):
        parse_label_config(value)  # type: ignore[arg-type]


def test_deeply_nested_config_parses_without_recursion() -> None:
    depth = 5000
    xml = "<View>" * depth + '<Image name="i" value="$i"/><Choices name="c" toName="i">'
    xml += '<Choice value="a"/></Choices>' + "</View>" * depth
    assert parse_label_config(xml).control("c").label_values == ("a",)


def test_oversized_config_is_refused() -> None:
    with pytest.raises(LabelConfigError, match="longer than"):
        parse_label_config("<View>" + " " * (1 << 20) + "</View>")
