"""The YOLO function over real HTTP with real ultralytics models: tiny ones trained on synthetic
shapes (tests/yolo_models.py), served by `lsfn serve yolo` with the network blocked for the
process, the task images served by a stand-in Label Studio."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image, ImageDraw

from tests import synthetic, yolo_models
from tests.servers import Answer, RecordingServer
from tests.serving import Function, call, network_attempts, network_guard

LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"
RECT = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" model_path="shapes-det.pt" model_score_threshold="0.25">
    <Label value="Round" predicted_values="circle"/>
    <Label value="Box" predicted_values="square"/>
    <Label value="triangle"/>
  </RectangleLabels>
</View>"""
SEGMENT = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image" model_path="shapes-seg.pt" model_score_threshold="0.25">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </PolygonLabels>
  <BrushLabels name="brush" toName="image" model_path="shapes-seg.pt" model_score_threshold="0.25">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </BrushLabels>
</View>"""
CLASSIFY = """<View>
  <Image name="image" value="$image"/>
  <Choices name="shape" toName="image" model_path="shapes-cls.pt" model_score_threshold="0.0">
    <Choice value="Circle" predicted_values="circle"/><Choice value="Square" predicted_values="square"/>
    <Choice value="Triangle" predicted_values="triangle"/>
  </Choices>
</View>"""
# A pose model and an OBB model with random weights: plumbing and coordinate frames only.
POSE_OBB = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="kp_bbox" toName="image" model_skip="true"><Label value="person"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" model_path="pose.pt" model_score_threshold="0.0"
                  model_point_threshold="0.0" model_add_bboxes="true" model_point_size="2">
    <Label value="nose" predicted_values="person" model_index="0"/>
    <View><Label value="left_eye" predicted_values="person" model_index="1"/></View>
  </KeyPointLabels>
  <RectangleLabels name="obb" toName="image" model_obb="true" model_path="obb.pt" model_score_threshold="0.0">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""
# Label configs as label-studio-ml-backend's YOLO README writes them, unchanged.
ML_BACKEND_CONFIGS = [
    """<View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="label" toName="image" model_score_threshold="0.25">
        <Label value="Car" background="blue" predicted_values="jeep,cab,limousine,truck"/>
      </RectangleLabels>
    </View>""",
    """<View>
      <Image name="image1" value="$image"/>
      <RectangleLabels name="label1" toName="image1" model_path="yolov8n.pt" model_score_threshold="0.1">
        <Label value="car" background="blue"/>
      </RectangleLabels>
      <RectangleLabels name="label2" toName="image1" model_path="yolov8m.pt" model_score_threshold="0.1">
        <Label value="car" background="red"/>
      </RectangleLabels>
    </View>""",
    """<View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="keypoints_bbox" toName="image" model_skip="true">
        <Label value="person"/>
      </RectangleLabels>
      <KeyPointLabels name="keypoints" toName="image"
        model_score_threshold="0.75" model_point_threshold="0.5"
        model_add_bboxes="true" model_point_size="1"
        model_path="yolov8n-pose.pt"
      >
        <Label value="nose" predicted_values="person" model_index="0" background="red" />
        <View>
          <Label value="left_shoulder" predicted_values="person" model_index="5" background="green" />
        </View>
      </KeyPointLabels>
    </View>""",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights directory: trained and random models under the names configs use."""
    root = tmp_path_factory.mktemp("weights")
    for name, source in {
        "shapes-det.pt": yolo_models.detector(),
        "yolov8m.pt": yolo_models.detector(),  # label-studio-ml-backend's default detector name
        "yolov8n.pt": yolo_models.detector(),
        "shapes-seg.pt": yolo_models.segmenter(),
        "shapes-cls.pt": yolo_models.classifier(),
        "pose.pt": yolo_models.random_model("pose"),
        "yolov8n-pose.pt": yolo_models.random_model("pose"),
        "obb.pt": yolo_models.random_model("obb"),
    }.items():
        shutil.copyfile(source, root / name)
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    outside = tmp_path_factory.mktemp("outside") / "secret.pt"
    shutil.copyfile(yolo_models.detector(), outside)
    (root / "escape.pt").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory, weights: Path, label_studio: RecordingServer) -> Iterator[Function]:
    tmp = tmp_path_factory.mktemp("yolo")
    # ultralytics must not reach the network.
    env = {
        **yolo_models.offline_env(),
        **network_guard(tmp),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": LEGACY_KEY,
        "MAX_CONCURRENT_PREDICTIONS": "2",
    }
    env.pop("YOLO_OFFLINE")  # the function sets it itself: prove that
    fn = Function("yolo", tmp, env, weights)
    fn.wait_ready()
    yield fn
    fn.close()




def serve_images(server: RecordingServer, prefix: str, images: list[np.ndarray]) -> list[str]:
    paths = []
    for i, pixels in enumerate(images):
        path = f"/data/upload/9/{prefix}-{i}.png"
        server.routes[path] = Answer(200, synthetic.png_bytes(pixels), {"Content-Type": "image/png"})
        paths.append(path)
    return paths


def predict(fn: Function, config: str, paths: list[str]) -> list[dict[str, Any]]:
    body = {"tasks": [{"id": i + 1, "data": {"image": p}} for i, p in enumerate(paths)], "label_config": config}
    response = call("POST", fn.url + "/predict", body)
    assert response.status == 200, response.data[:2000]
    results = response.json()["results"]
    assert len(results) == len(paths)
    return results


def held_out(count: int, size: tuple[int, int], seed: int, shapes: int | tuple[int, int] = (1, 3)) -> list[tuple[np.ndarray, list[synthetic.Shape]]]:
    rng = np.random.default_rng(seed)
    return [synthetic.make_image(rng, size=size, shapes=shapes) for _ in range(count)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area else 0.0


EXPECTED_LABEL = {"circle": "Round", "square": "Box", "triangle": "triangle"}


def test_detection_recall_and_coordinates(yolo: Function, label_studio: RecordingServer) -> None:
    data = held_out(30, (160, 120), seed=101)
    results = predict(yolo, RECT, serve_images(label_studio, "det", [pixels for pixels, _ in data]))
    found = total = 0
    for (pixels, shapes), item in zip(data, results):
        height, width = pixels.shape[:2]
        regions = item["result"]
        assert item["model_version"].startswith("yolo-shapes-det@")
        for region in regions:
            assert (region["original_width"], region["original_height"]) == (width, height)
            assert region["from_name"] == "label" and region["type"] == "rectanglelabels"
            assert region["value"]["rectanglelabels"][0] in EXPECTED_LABEL.values()
            assert region["score"] >= 0.25
        for shape in shapes:
            total += 1
            truth = shape.bbox()
            for region in regions:
                v = region["value"]
                # Percent back to pixels: the box must sit on the true shape.
                box = (v["x"] * width / 100, v["y"] * height / 100,
                       (v["x"] + v["width"]) * width / 100, (v["y"] + v["height"]) * height / 100)
                if v["rectanglelabels"] == [EXPECTED_LABEL[shape.kind]] and box_iou(box, truth) >= 0.5:
                    found += 1
                    break
    assert found / total >= 0.9, f"recall {found}/{total}"


def test_segmentation_polygons_and_brush_masks(yolo: Function, label_studio: RecordingServer) -> None:
    data = held_out(12, (160, 120), seed=202)
    results = predict(yolo, SEGMENT, serve_images(label_studio, "seg", [pixels for pixels, _ in data]))
    polygon_ious, brush_ious = [], []
    for (pixels, shapes), item in zip(data, results):
        height, width = pixels.shape[:2]
        polygons = [r for r in item["result"] if r["type"] == "polygonlabels"]
        brushes = [r for r in item["result"] if r["type"] == "brushlabels"]
        for shape in shapes:
            truth = shape.mask(height, width)
            best_polygon = best_brush = 0.0
            for region in polygons:
                if region["value"]["polygonlabels"] != [shape.kind]:
                    continue
                canvas = Image.new("1", (width, height))
                points = [(x * width / 100, y * height / 100) for x, y in region["value"]["points"]]
                ImageDraw.Draw(canvas).polygon(points, fill=1)
                best_polygon = max(best_polygon, iou(np.asarray(canvas, dtype=bool), truth))
            for region in brushes:
                if region["value"]["brushlabels"] != [shape.kind]:
                    continue
                assert region["value"]["format"] == "rle"
                # label-studio-sdk's own decoder: RGBA bytes, the mask in the alpha channel.
                decoded = np.reshape(decode_rle(region["value"]["rle"]), (height, width, 4))[:, :, 3] > 0
                best_brush = max(best_brush, iou(decoded, truth))
            polygon_ious.append(best_polygon)
            brush_ious.append(best_brush)
    assert np.mean(polygon_ious) >= 0.7, polygon_ious
    assert np.mean(brush_ious) >= 0.7, brush_ious


def test_classification_picks_the_shape(yolo: Function, label_studio: RecordingServer) -> None:
    data = held_out(30, (64, 64), seed=303, shapes=1)
    results = predict(yolo, CLASSIFY, serve_images(label_studio, "cls", [pixels for pixels, _ in data]))
    names = {"circle": "Circle", "square": "Square", "triangle": "Triangle"}
    right = 0
    for (_, shapes), item in zip(data, results):
        (choice,) = item["result"]
        assert choice["type"] == "choices" and choice["from_name"] == "shape"
        right += choice["value"]["choices"] == [names[shapes[0].kind]]
    assert right / len(data) >= 0.9, f"{right}/{len(data)}"


def test_pose_and_oriented_boxes_are_well_formed(yolo: Function, label_studio: RecordingServer) -> None:
    data = held_out(2, (160, 120), seed=404)
    results = predict(yolo, POSE_OBB, serve_images(label_studio, "pose", [pixels for pixels, _ in data]))
    for item in results:
        regions = item["result"]
        boxes = {r["id"]: r for r in regions if r["from_name"] == "kp_bbox"}
        points = [r for r in regions if r["type"] == "keypointlabels"]
        oriented = [r for r in regions if r["from_name"] == "obb"]
        assert boxes and points and oriented, {r["from_name"] for r in regions}
        for region in regions:
            assert (region["original_width"], region["original_height"]) == (160, 120)
        for point in points:
            assert point["value"]["keypointlabels"][0] in ("nose", "left_eye")
            assert 0 <= point["value"]["x"] <= 100 and 0 <= point["value"]["y"] <= 100
            assert point["parentID"] in boxes
            assert point["value"]["width"] == pytest.approx(2 * 100 / 160)
        for box in boxes.values():
            assert box["value"]["rectanglelabels"] == ["person"]
        for region in oriented:
            value = region["value"]
            assert 0 <= value["rotation"] < 360 and value["width"] > 0 and value["height"] > 0
            assert value["rectanglelabels"][0] in yolo_models.CLASSES


@pytest.mark.parametrize("config", ML_BACKEND_CONFIGS)
def test_label_studio_ml_backend_configs_are_accepted(yolo: Function, label_studio: RecordingServer, config: str) -> None:
    response = call("POST", yolo.url + "/setup", {"project": "9.1", "schema": config})
    assert response.status == 200, response.data
    assert response.json()["model_version"].startswith("yolo-")
    paths = serve_images(label_studio, "compat", [held_out(1, (160, 120), seed=505)[0][0]])
    predict(yolo, config, paths)


@pytest.mark.parametrize(
    ("model_path", "message"),
    [
        ("../outside.pt", "outside the weights directory"),
        ("/etc/passwd", "outside the weights directory"),
        ("escape.pt", "outside the weights directory"),  # a symlink out of the directory
        ("missing.pt", "no such weights file"),
    ],
)
def test_model_path_outside_or_missing_is_refused(yolo: Function, model_path: str, message: str) -> None:
    config = RECT.replace('model_path="shapes-det.pt"', f'model_path="{model_path}"')
    for path, body in (("/setup", {"schema": config}), ("/predict", {"tasks": [{"id": 1, "data": {"image": "/x.png"}}], "label_config": config})):
        response = call("POST", yolo.url + path, body)
        assert response.status == 422, response.data
        assert response.json()["error"] == "unusable weights" and message in response.json()["detail"]


def test_corrupt_weights_are_a_clear_error(yolo: Function, label_studio: RecordingServer) -> None:
    paths = serve_images(label_studio, "corrupt", [held_out(1, (160, 120), seed=606)[0][0]])
    config = RECT.replace('model_path="shapes-det.pt"', 'model_path="corrupt.pt"')
    body = {"tasks": [{"id": 1, "data": {"image": paths[0]}}], "label_config": config}
    response = call("POST", yolo.url + "/predict", body)
    assert response.status == 422
    assert "cannot load weights 'corrupt.pt'" in response.json()["detail"]
    assert call("GET", yolo.url + "/health").status == 200


def test_an_unreadable_image_fails_its_task_only(yolo: Function, label_studio: RecordingServer) -> None:
    label_studio.routes["/data/upload/9/garbage.png"] = Answer(200, b"\x89PNG\r\n\x1a\n garbage")
    paths = serve_images(label_studio, "ok", [held_out(1, (160, 120), seed=909)[0][0]])
    bad, good = predict(yolo, RECT, ["/data/upload/9/garbage.png", paths[0]])
    assert "result" not in bad and bad["error"].startswith("unreadable image")
    assert "result" in good


def test_a_data_url_image_is_predicted(yolo: Function) -> None:
    pixels, shapes = held_out(1, (160, 120), seed=808, shapes=1)[0]
    url = "data:image/png;base64," + base64.b64encode(synthetic.png_bytes(pixels)).decode()
    (item,) = predict(yolo, RECT, [url])
    assert [r["value"]["rectanglelabels"] for r in item["result"]] == [[EXPECTED_LABEL[shapes[0].kind]]]


SHIPPED = Path(__file__).parent.parent / "functions" / "yolo" / "models"
SHAPES = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" model_path="shapes.pt" model_score_threshold="0.5">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""


def test_out_of_the_box_the_shipped_detector_finds_the_sample_shapes(tmp_path: Path) -> None:
    """A fresh machine: no MODEL_ROOT, `lsfn serve yolo`, README's request on the sample image."""
    fn = Function("yolo", tmp_path, {"MODEL_ROOT": None, **yolo_models.offline_env()}, SHIPPED)
    try:
        fn.wait_ready()
        image = "data:image/png;base64," + base64.b64encode((SHIPPED / "sample.png").read_bytes()).decode()
        (item,) = predict(fn, SHAPES, [image])
        found = sorted(r["value"]["rectanglelabels"][0] for r in item["result"])
        assert found == ["circle", "square", "triangle"]
        assert item["model_version"].startswith("yolo-shapes@")
    finally:
        fn.close()


def test_shipped_weights_match_their_listed_sha256() -> None:
    import hashlib
    import json

    listing = json.loads((SHIPPED.parent / "weights.json").read_text())["weights"]
    shipped = [entry for entry in listing if entry.get("shipped")]
    assert shipped
    for entry in shipped:
        assert hashlib.sha256((SHIPPED / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]


TRACK = """<View>
  <Video name="video" value="$video"/>
  <VideoRectangle name="box" toName="video" model_path="shapes-det.pt" model_tracker="bytetrack"/>
  <Labels name="videoLabels" toName="video"><Label value="square"/></Labels>
</View>"""


def test_tracking_keeps_one_id_for_a_moving_square(yolo: Function, label_studio: RecordingServer, tmp_path: Path) -> None:
    frames = synthetic.moving_square_frames(20)
    video = synthetic.write_video(frames, tmp_path / "square.mp4")
    label_studio.routes["/data/upload/9/square.mp4"] = Answer(200, video.read_bytes(), {"Content-Type": "video/mp4"})
    body = {"tasks": [{"id": 1, "data": {"video": "/data/upload/9/square.mp4"}}], "label_config": TRACK}
    response = call("POST", yolo.url + "/predict", body)
    assert response.status == 200, response.data[:2000]
    (track,) = response.json()["results"][0]["result"]  # one square, one track id
    assert track["type"] == "videorectangle" and track["from_name"] == "box" and track["to_name"] == "video"
    value = track["value"]
    assert value["labels"] == ["square"] and value["framesCount"] == 20
    sequence = value["sequence"]
    assert len(sequence) >= 18
    assert [f["frame"] for f in sequence] == sorted(f["frame"] for f in sequence)
    # The square moves to the right: so does its box.
    assert sequence[-1]["x"] > sequence[0]["x"]


def test_tracker_settings_from_the_label_config(yolo: Function, label_studio: RecordingServer, tmp_path: Path) -> None:
    video = synthetic.write_video(synthetic.moving_square_frames(20), tmp_path / "square.mp4")
    label_studio.routes["/data/upload/9/square2.mp4"] = Answer(200, video.read_bytes(), {"Content-Type": "video/mp4"})
    task = [{"id": 1, "data": {"video": "/data/upload/9/square2.mp4"}}]
    tuned = TRACK.replace('model_tracker="bytetrack"', 'model_tracker="bytetrack" bytetrack_track_buffer="60"')
    response = call("POST", yolo.url + "/predict", {"tasks": task, "label_config": tuned})
    assert response.status == 200 and len(response.json()["results"][0]["result"]) == 1
    wrong = TRACK.replace('model_tracker="bytetrack"', 'model_tracker="bytetrack" bytetrack_no_such="1"')
    response = call("POST", yolo.url + "/predict", {"tasks": task, "label_config": wrong})
    assert response.status == 422 and "no setting 'no_such'" in response.json()["detail"]
    unknown = TRACK.replace('model_tracker="bytetrack"', 'model_tracker="sort"')
    assert call("POST", yolo.url + "/setup", {"schema": unknown}).status == 422
    # A text setting (BoT-SORT's ReID "model") would make ultralytics load or download a file.
    reid = TRACK.replace('model_tracker="bytetrack"', 'model_tracker="botsort" botsort_with_reid="true" botsort_model="/etc/passwd"')
    response = call("POST", yolo.url + "/predict", {"tasks": task, "label_config": reid})
    assert response.status == 422 and "cannot be set from a label config" in response.json()["detail"]


def test_a_control_needs_weights_of_its_task(yolo: Function, label_studio: RecordingServer) -> None:
    config = SEGMENT.replace('model_path="shapes-seg.pt"', 'model_path="shapes-det.pt"')
    paths = serve_images(label_studio, "mismatch", [held_out(1, (160, 120), seed=112)[0][0]])
    body = {"tasks": [{"id": 1, "data": {"image": paths[0]}}], "label_config": config}
    response = call("POST", yolo.url + "/predict", body)
    assert response.status == 422
    assert "'shapes-det.pt' is a detect model; PolygonLabels \"poly\" needs a segment model" in response.json()["detail"]


def test_a_control_whose_labels_map_to_no_class_is_skipped(yolo: Function, label_studio: RecordingServer) -> None:
    config = RECT.replace('<Label value="triangle"/>', "").replace('predicted_values="circle"', 'predicted_values="car"')
    config = config.replace('predicted_values="square"', 'predicted_values="bus"')
    paths = serve_images(label_studio, "nomap", [held_out(1, (160, 120), seed=111)[0][0]])
    (item,) = predict(yolo, config, paths)
    assert item["result"] == []


def test_video_frames_read_with_a_stride_keep_their_own_numbers(
    tmp_path: Path, weights: Path, label_studio: RecordingServer
) -> None:
    frames = synthetic.moving_square_frames(20)
    video = synthetic.write_video(frames, tmp_path / "square.mp4", fps=10)
    label_studio.routes["/data/upload/9/stride.mp4"] = Answer(200, video.read_bytes(), {"Content-Type": "video/mp4"})
    env = {**yolo_models.offline_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_KEY,
           "VIDEO_FRAME_STRIDE": "2"}  # fmt: skip
    fn = Function("yolo", tmp_path, env, weights)
    try:
        fn.wait_ready()
        body = {"tasks": [{"id": 1, "data": {"video": "/data/upload/9/stride.mp4"}}], "label_config": TRACK}
        (track,) = call("POST", fn.url + "/predict", body).json()["results"][0]["result"]
    finally:
        fn.close()
    sequence = track["value"]["sequence"]
    assert [f["frame"] for f in sequence] == list(range(2, 21, 2))
    assert [f["enabled"] for f in sequence] == [True] * 9 + [False]  # interpolated between reads
    side = 24
    for keyframe in sequence:
        assert keyframe["time"] == pytest.approx(keyframe["frame"] / 10)
        # The square's left edge in the 0-based frame this keyframe names, in pixels.
        true_x = round(2 + (96 - side - 4) * (keyframe["frame"] - 1) / 19)
        assert abs(keyframe["x"] * 96 / 100 - true_x) <= 2.5, keyframe


def test_no_network_was_attempted(yolo: Function, label_studio: RecordingServer) -> None:
    # Exercise every model once more, then read what the guard recorded.
    paths = serve_images(label_studio, "net", [held_out(1, (160, 120), seed=707)[0][0]])
    for config in (RECT, SEGMENT, CLASSIFY, POSE_OBB):
        predict(yolo, config, paths)
    assert network_attempts(yolo.log_path.parent) == ""


def test_taxonomy_gets_a_taxonomy_result(yolo: Function, label_studio: RecordingServer) -> None:
    config = CLASSIFY.replace("<Choices", "<Taxonomy").replace("</Choices>", "</Taxonomy>")
    pixels, shapes = held_out(1, (64, 64), seed=113, shapes=1)[0]
    (item,) = predict(yolo, config, serve_images(label_studio, "tax", [pixels]))
    (result,) = item["result"]
    names = {"circle": "Circle", "square": "Square", "triangle": "Triangle"}
    assert result["type"] == "taxonomy" and result["value"]["taxonomy"] == [[names[shapes[0].kind]]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_a_gpu_that_cannot_be_used_fails_health_with_the_reason(tmp_path: Path, weights: Path) -> None:
    """DEVICE=cuda on a machine whose torch sees no GPU: /health says FAILED and why, instead of
    the function predicting on the CPU."""
    fn = Function("yolo", tmp_path, {"DEVICE": "cuda", **yolo_models.offline_env()}, weights)
    try:
        deadline = time.monotonic() + 60
        while (health := call("GET", fn.url + "/health")).json()["status"] == "LOADING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health.status == 503 and health.json()["status"] == "FAILED"
        assert "DEVICE=cuda: torch " in health.json()["detail"]
    finally:
        fn.close()
