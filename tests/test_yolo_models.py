"""The YOLO test fixtures themselves: synthetic ground truth is exact, and the cached models load
and predict offline, the trained ones as well as they must for the tests built on them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from PIL import Image

from tests import synthetic, yolo_models


def test_shapes_have_exact_masks_boxes_and_polygons() -> None:
    rng = np.random.default_rng(3)
    for size in [(128, 128), (160, 120), (96, 160)] * 10:
        pixels, shapes = synthetic.make_image(rng, size)
        w, h = size
        assert pixels.shape == (h, w, 3) and pixels.dtype == np.uint8
        assert 1 <= len(shapes) <= 3
        masks = [shape.mask(h, w) for shape in shapes]
        assert not np.any(np.sum(masks, axis=0) > 1), "shapes overlap"
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        centres = np.column_stack([xs.ravel(), ys.ravel()])
        for shape, mask in zip(shapes, masks):
            x0, y0, x1, y1 = shape.bbox()
            assert 0 < x0 < x1 < w and 0 < y0 < y1 < h
            rows, cols = np.nonzero(mask)
            # The mask fills its box: pixel extents within a pixel or two (a triangle's apex).
            assert abs(cols.min() - x0) <= 1 and abs(cols.max() + 1 - x1) <= 1
            assert abs(rows.min() - y0) <= 2 and abs(rows.max() + 1 - y1) <= 1
            inside = PolygonPath(shape.polygon()).contains_points(centres).reshape(h, w)
            assert (inside & mask).sum() / (inside | mask).sum() > 0.95
            # Drawn in its colour, far from the dark background around it.
            assert np.abs(pixels[mask].mean(axis=0) - shape.color).max() < 6
            assert pixels[mask].mean() - pixels[~np.any(masks, axis=0)].mean() > 60


def test_images_are_reproducible_and_cover_every_kind() -> None:
    first = synthetic.make_image(np.random.default_rng(11), shapes=3)
    again = synthetic.make_image(np.random.default_rng(11), shapes=3)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    rng = np.random.default_rng(0)
    kinds = {s.kind for _ in range(20) for s in synthetic.make_image(rng)[1]}
    assert kinds == set(synthetic.KINDS)
    plain, _ = synthetic.make_image(rng, noise=False, shapes=1, kinds=("square",))
    assert len(np.unique(plain.reshape(-1, 3), axis=0)) == 2


def test_png_bytes_decode_to_the_same_pixels() -> None:
    pixels, _ = synthetic.make_image(np.random.default_rng(1), (160, 120))
    decoded = np.asarray(Image.open(io.BytesIO(synthetic.png_bytes(pixels))).convert("RGB"))
    assert np.array_equal(decoded, pixels)


def test_video_reads_back_frame_by_frame(tmp_path: Path) -> None:
    frames = synthetic.moving_square_frames()
    path = synthetic.write_video(frames, tmp_path / "square.mp4")
    capture = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read.append(frame[..., ::-1])
    capture.release()
    assert len(read) == 20
    assert all(f.shape == (96, 96, 3) for f in read)
    # Lossy but faithful, and the square moves right.
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(read, frames)) < 6
    lefts = [int(np.argmax((f.mean(axis=2) > 160).any(axis=0))) for f in read]
    assert lefts == sorted(lefts) and lefts[-1] - lefts[0] > 40


def test_the_network_guard_refuses_and_reports() -> None:
    done = yolo_models.run_offline(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('pypi.org', 443), timeout=2)\n"
        "except OSError:\n"
        "    print('refused')\n"
        "try:\n"
        "    socket.socket().connect(('1.1.1.1', 53))\n"
        "except OSError:\n"
        "    print('refused')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "refused"]
    assert done.stderr.count(yolo_models.NETWORK_ATTEMPT) == 2


MODELS = {
    "detect": (yolo_models.detector, "detect", dict(enumerate(yolo_models.CLASSES))),
    "segment": (yolo_models.segmenter, "segment", dict(enumerate(yolo_models.CLASSES))),
    "classify": (yolo_models.classifier, "classify", dict(enumerate(yolo_models.CLASSES))),
    "pose": (lambda: yolo_models.random_model("pose"), "pose", {0: "person"}),
    "obb": (lambda: yolo_models.random_model("obb"), "obb", dict(enumerate(yolo_models.CLASSES))),
    "random-detect": (
        lambda: yolo_models.random_model("detect"), "detect", dict(enumerate(yolo_models.CLASSES))
    ),
}

# Loads each model in a fresh offline process and predicts on one synthetic image (BGR, as
# ultralytics takes numpy input).
_PREDICT = """
import json, sys
import numpy as np
from ultralytics import YOLO
from tests import synthetic

pixels, _ = synthetic.make_image(np.random.default_rng(5), (160, 128))
out = {}
for name, path in json.loads(sys.argv[1]).items():
    model = YOLO(path)
    result = model.predict(pixels[..., ::-1], verbose=False)[0]
    out[name] = {
        "task": model.task,
        "names": model.names,
        "boxes": None if result.boxes is None else len(result.boxes),
        "masks": None if result.masks is None else len(result.masks),
        "top1": None if result.probs is None else int(result.probs.top1),
        "keypoints": None if result.keypoints is None else list(result.keypoints.data.shape),
        "obb": None if result.obb is None else len(result.obb),
    }
print(json.dumps(out))
"""


def test_every_model_loads_and_predicts_with_the_network_blocked() -> None:
    paths = {name: str(make()) for name, (make, _, _) in MODELS.items()}
    code = f"import sys; sys.argv[1:] = [{json.dumps(paths)!r}]\n" + _PREDICT
    done = yolo_models.run_offline(code)
    assert done.returncode == 0, done.stderr[-5000:]
    assert yolo_models.NETWORK_ATTEMPT not in done.stderr, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, task, names) in MODELS.items():
        got = seen[name]
        assert got["task"] == task
        assert {int(k): v for k, v in got["names"].items()} == names
    assert seen["detect"]["boxes"] >= 1
    assert seen["segment"]["masks"] == seen["segment"]["boxes"] >= 1
    assert seen["classify"]["top1"] in range(3)
    # Untrained models still yield objects, so a test can follow them through the conversion.
    assert seen["pose"]["keypoints"][1:] == [17, 3] and seen["pose"]["keypoints"][0] >= 1
    assert seen["obb"]["obb"] >= 1 and seen["random-detect"]["boxes"] >= 1


def test_detector_finds_held_out_shapes() -> None:
    scores = yolo_models.evaluate("detect", yolo_models.detector())
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.8, scores


def test_segmenter_masks_match_held_out_shapes() -> None:
    scores = yolo_models.evaluate("segment", yolo_models.segmenter())
    assert scores["recall"] >= 0.9 and scores["mask_iou"] >= 0.7, scores


def test_classifier_names_held_out_shapes() -> None:
    scores = yolo_models.evaluate("classify", yolo_models.classifier())
    assert scores["accuracy"] >= 0.9, scores


def test_models_are_cached_with_their_measurements() -> None:
    folder = yolo_models.yolo_models_dir()
    assert folder.name.startswith("yolo-models-") and folder.parent.name == "lsfn"
    assert yolo_models.detector() == folder / "detect.pt"
    report = yolo_models.report("detect")
    assert report["train_seconds"] > 0 and report["held_out"]["recall"] >= 0.9
    with pytest.raises(ValueError):
        yolo_models.random_model("segment")  # type: ignore[arg-type]


def test_detector_tracks_the_square_through_the_video(tmp_path: Path) -> None:
    video = synthetic.write_video(synthetic.moving_square_frames(), tmp_path / "square.mp4")
    code = f"""
import json, cv2
from ultralytics import YOLO
model = YOLO({str(yolo_models.detector())!r})
capture, seen = cv2.VideoCapture({str(video)!r}), []
while True:
    ok, frame = capture.read()
    if not ok:
        break
    boxes = model.track(frame, persist=True, verbose=False)[0].boxes
    ids = [] if boxes.id is None else [int(i) for i in boxes.id]
    seen.append([[model.names[int(c)] for c in boxes.cls], ids])
print(json.dumps(seen))
"""
    done = yolo_models.run_offline(code)
    assert done.returncode == 0, done.stderr[-5000:]
    assert yolo_models.NETWORK_ATTEMPT not in done.stderr, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 20
    assert all(names == ["square"] for names, _ in seen)
    assert len({tuple(ids) for _, ids in seen}) == 1 and len(seen[0][1]) == 1
