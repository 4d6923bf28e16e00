"""The SAM 2 function over real HTTP: `lsfn serve sam2` with a random-weight tiny SAM 2.1 loaded
from a checkpoint file, the images served by a stand-in Label Studio, the network blocked for
the function's process. Every mask is checked against sam2's own SAM2ImagePredictor with the
same checkpoint, after a round trip through Label Studio's RLE (label-studio-sdk's decoder)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image, ImageDraw

from tests import configs, synthetic
from tests.sam2_models import TINY_CHECKPOINT, Reference, write_checkpoint
from tests.servers import Answer, RecordingServer
from tests.serving import Function, call, network_attempts, network_guard

LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"
# Captured from Label Studio: smart keypoints and boxes with the mask's labels, and a TextArea.
SMART = configs.CAPTURED_INTERACTIVE
# The seed's SAM 2 config: points labelled positive/negative, a box, a differently named mask label.
SEED = configs.SAM2
POLYGON = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cat"/></KeyPointLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Cat"/></PolygonLabels>
</View>"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sam2-weights")
    write_checkpoint(root / TINY_CHECKPOINT)
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint at all")
    return root


@pytest.fixture(scope="module")
def reference(weights: Path) -> Reference:
    return Reference(weights / TINY_CHECKPOINT)


def serve_sam2(tmp: Path, weights: Path, label_studio: RecordingServer, **env: str) -> Function:
    full = {
        **network_guard(tmp),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": LEGACY_KEY,
        "MODEL_SIZE": "tiny",
        "MAX_CONCURRENT_PREDICTIONS": "2",
        **env,
    }
    return Function("sam2", tmp, full, weights)


@pytest.fixture(scope="module")
def sam2(tmp_path_factory: pytest.TempPathFactory, weights: Path, label_studio: RecordingServer) -> Iterator[Function]:
    fn = serve_sam2(tmp_path_factory.mktemp("sam2"), weights, label_studio)
    fn.wait_ready()
    yield fn
    fn.close()


# -- helpers ------------------------------------------------------------------------------------

_served = 0


def serve_image(server: RecordingServer, pixels: np.ndarray, path: str | None = None) -> str:
    global _served
    _served += 1
    path = path or f"/data/upload/7/sam-{_served}.png"
    server.routes[path] = Answer(200, synthetic.png_bytes(pixels), {"Content-Type": "image/png"})
    return path


def image(seed: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    pixels, _ = synthetic.make_image(np.random.default_rng(seed), size=size, shapes=(2, 3))
    return pixels


def point(x: float, y: float, size: tuple[int, int], label: str = "Cat", positive: bool | None = True,
          from_name: str = "kp") -> dict[str, Any]:  # fmt: skip
    """A KeyPointLabels region as the frontend sends it; x, y in pixels (sent as percent)."""
    width, height = size
    region: dict[str, Any] = {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 0.6, "keypointlabels": [label]},
        "id": f"kp{x:.0f}-{y:.0f}", "from_name": from_name, "to_name": "image", "type": "keypointlabels", "origin": "manual",
    }  # fmt: skip
    if positive is not None:  # only smart (dynamic) points carry is_positive and value.labels
        region["is_positive"] = positive
        region["value"]["labels"] = [label]
    return region


def box(x0: float, y0: float, x1: float, y1: float, size: tuple[int, int], label: str = "Cat",
        from_name: str = "rect") -> dict[str, Any]:  # fmt: skip
    width, height = size
    value = {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
             "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [label]}  # fmt: skip
    return {"original_width": width, "original_height": height, "image_rotation": 0, "value": value, "id": "rc1",
            "from_name": from_name, "to_name": "image", "type": "rectanglelabels", "origin": "manual"}  # fmt: skip


def click(fn: Function, path: str, regions: list[dict[str, Any]], config: str = SMART) -> tuple[dict[str, Any], str]:
    """One interactive /predict as Label Studio forwards it; (the prediction, Server-Timing)."""
    body = {"tasks": [{"id": 1, "data": {"image": path}}], "label_config": config, "project": "7.1",
            "params": {"login": None, "password": None, "context": {"result": regions}}}  # fmt: skip
    response = call("POST", fn.url + "/predict", body)
    assert response.status == 200, response.data[:2000]
    (prediction,) = response.json()["results"]
    return prediction, response.headers.get("Server-Timing", "")


def brush_mask(region: dict[str, Any]) -> np.ndarray:
    """A brushlabels region decoded by label-studio-sdk, as Label Studio renders it."""
    width, height = region["original_width"], region["original_height"]
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def metric(fn: Function, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in call("GET", fn.url + "/metrics").data.decode().splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def server_timing(header: str) -> dict[str, float]:
    """``fetch;dur=1.2, total;dur=3.4`` as {"fetch": 1.2, "total": 3.4}."""
    return {name.strip(): float(dur) for name, dur in (part.split(";dur=") for part in header.split(","))}


def encoder_runs(fn: Function) -> float:
    return metric(fn, "lsfn_model_calls_total", call="sam2_image_encoder")


# -- masks --------------------------------------------------------------------------------------


def test_a_click_answers_the_brush_mask_sam2_makes(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    pixels = image(1)
    path = serve_image(label_studio, pixels)
    prediction, timing = click(sam2, path, [point(60, 50, (160, 120), label="Dog")])
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels"
    assert (region["from_name"], region["to_name"]) == ("brush", "image")
    assert region["value"]["brushlabels"] == ["Dog"]
    assert region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (160, 120)
    assert 0.0 <= region["score"] <= 1.0 and prediction["score"] == pytest.approx(region["score"])
    assert prediction["model_version"].startswith("sam2-sam2.1_hiera_tiny@")
    mask = brush_mask(region)
    # A single click: the best of three proposals by predicted IoU, as sam2's predictor gives them.
    expected = reference(pixels, [(60, 50)], [1], multimask=True)
    assert 0 < expected.sum() < expected.size  # a real decision, not an empty or full mask
    assert iou(mask, expected) >= 0.99
    for phase in ("fetch", "decode", "image-encoder", "mask-decoder", "rle"):
        assert f"{phase};dur=" in timing


def test_points_and_a_box_make_one_mask(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    pixels = image(2)
    path = serve_image(label_studio, pixels)
    size = (160, 120)
    prediction, _ = click(sam2, path, [box(20, 15, 120, 100, size), point(70, 60, size)])
    (region,) = prediction["result"]
    expected = reference(pixels, [(70, 60)], [1], box=(20, 15, 120, 100))
    assert iou(brush_mask(region), expected) >= 0.99
    # A box alone, and two boxes: one mask per box.
    (alone,) = click(sam2, path, [box(20, 15, 120, 100, size)])[0]["result"]
    assert iou(brush_mask(alone), reference(pixels, box=(20, 15, 120, 100))) >= 0.99
    boxes = [(20, 15, 120, 100), (5, 5, 60, 50)]
    two = click(sam2, path, [box(*b, size) for b in boxes])[0]["result"]
    assert [iou(brush_mask(r), reference(pixels, box=b)) >= 0.99 for r, b in zip(two, boxes)] == [True, True]
    # Two boxes and a negative point: each box's mask is decoded with the point.
    negative = point(50, 40, size, positive=False)
    two = click(sam2, path, [box(*boxes[0], size), negative, box(*boxes[1], size)])[0]["result"]
    expected = [reference(pixels, [(50, 40)], [0], box=b) for b in boxes]
    assert [iou(brush_mask(r), e) >= 0.99 for r, e in zip(two, expected)] == [True, True]


def test_negative_points_by_flag_and_by_label(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    pixels = image(3)
    path = serve_image(label_studio, pixels)
    size = (160, 120)
    positive_only = reference(pixels, [(80, 60), (30, 30)], [1, 1])
    expected = reference(pixels, [(80, 60), (30, 30)], [1, 0])
    assert iou(positive_only, expected) < 0.95  # the negative point matters for this model
    flagged, _ = click(sam2, path, [point(80, 60, size), point(30, 30, size, positive=False)])
    assert iou(brush_mask(flagged["result"][0]), expected) >= 0.99
    # The seed's config: not smart, so no is_positive; the point's label says it.
    labelled, _ = click(sam2, path, [point(80, 60, size, "positive", None), point(30, 30, size, "negative", None)], SEED)
    (region,) = labelled["result"]
    assert iou(brush_mask(region), expected) >= 0.99
    assert region["value"]["brushlabels"] == ["athlete"]  # no prompt label is a mask label
    assert (region["from_name"], region["type"]) == ("label", "brushlabels")


def test_polygon_config_answers_the_outline_of_the_mask(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    import cv2

    pixels = image(4)
    path = serve_image(label_studio, pixels)
    prediction, _ = click(sam2, path, [point(80, 60, (160, 120))], POLYGON)
    (region,) = prediction["result"]
    assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["Cat"]
    assert region["from_name"] == "outline" and region["value"]["closed"] is True
    points = np.array(region["value"]["points"])
    assert points.shape[0] >= 3 and (points >= 0).all() and (points <= 100).all()
    # Drawn back at the image size, the outline covers the largest region of sam2's mask.
    expected = reference(pixels, [(80, 60)], [1], multimask=True)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(expected.astype(np.uint8), connectivity=8)
    largest = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    drawn = Image.new("L", (160, 120))
    ImageDraw.Draw(drawn).polygon([(x * 1.6, y * 1.2) for x, y in points], fill=1)
    assert iou(np.asarray(drawn) > 0, largest) >= 0.85


def test_a_large_image_gets_a_mask_of_its_own_size(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    size = (3840, 2160)
    pixels = image(5, size)
    prediction, _ = click(sam2, serve_image(label_studio, pixels), [point(1900, 1000, size)])
    (region,) = prediction["result"]
    mask = brush_mask(region)
    assert mask.shape == (2160, 3840)
    expected = reference(pixels, [(1900, 1000)], [1], multimask=True)
    assert 0 < expected.sum() < expected.size and iou(mask, expected) >= 0.99


# -- no prompt, bad prompts ---------------------------------------------------------------------


def test_without_context_each_task_gets_an_empty_prediction(sam2: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(6))
    before = len(label_studio.hits)
    tasks = [{"id": i, "data": {"image": path}} for i in range(3)]
    response = call("POST", sam2.url + "/predict", {"tasks": tasks, "label_config": SMART, "params": {"context": None}})
    assert response.status == 200, response.data
    assert [item["result"] for item in response.json()["results"]] == [[], [], []]
    # A typed text is not a prompt for SAM 2 either.
    text = [{"value": {"text": ["a cat"]}, "id": "t", "from_name": "p", "to_name": "image", "type": "textarea"}]
    prediction, _ = click(sam2, path, text)
    assert prediction["result"] == []
    assert len(label_studio.hits) == before  # nothing was fetched


def test_bad_prompts_and_configs_are_refused(sam2: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(7))
    broken = point(10, 10, (160, 120))
    del broken["value"]["y"]
    body = {"tasks": [{"id": 1, "data": {"image": path}}], "label_config": SMART, "params": {"context": {"result": [broken]}}}
    response = call("POST", sam2.url + "/predict", body)
    assert response.status == 422 and "kp10-10" in response.json()["detail"], response.data
    rect_only = '<View><Image name="image" value="$image"/><RectangleLabels name="r" toName="image"><Label value="a"/></RectangleLabels></View>'
    response = call("POST", sam2.url + "/setup", {"project": "7.1", "schema": rect_only})
    assert response.status == 422 and "BrushLabels or PolygonLabels" in response.json()["detail"]
    missing = {**body, "tasks": [{"id": 1, "data": {"picture": path}}], "params": {"context": {"result": [point(10, 10, (160, 120))]}}}
    response = call("POST", sam2.url + "/predict", missing)
    assert response.status == 422 and "'image'" in response.json()["detail"]


# -- the embedding cache ------------------------------------------------------------------------


def test_follow_up_clicks_skip_fetch_and_encoder(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    first, second = image(11), image(12)
    a, b = serve_image(label_studio, first), serve_image(label_studio, second)
    size = (160, 120)
    runs = encoder_runs(sam2)
    hits = metric(sam2, "lsfn_cache_lookups_total", cache="embedding", result="hit")
    for path, pixels, at in [(a, first, (40, 40)), (a, first, (100, 80)), (b, second, (40, 40)), (a, first, (120, 30))]:
        prediction, timing = click(sam2, path, [point(*at, size)])
        assert iou(brush_mask(prediction["result"][0]), reference(pixels, [at], [1], multimask=True)) >= 0.99
    assert encoder_runs(sam2) == runs + 2  # one per image
    assert [hit.path for hit in label_studio.hits].count(a) == 1  # follow-ups are not fetched
    assert "image-encoder" not in timing and "fetch" not in timing
    # The same bytes under another URL: fetched, recognised, not encoded again.
    copy = serve_image(label_studio, first)
    click(sam2, copy, [point(40, 40, size)])
    assert encoder_runs(sam2) == runs + 2
    assert metric(sam2, "lsfn_cache_lookups_total", cache="embedding", result="hit") == hits + 3


def test_an_image_replaced_under_its_url_is_noticed(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    """Within EMBEDDING_URL_TTL a click is not fetched: a replacement of another size is noticed
    from the size the browser reports with the click."""
    path = serve_image(label_studio, image(16))
    click(sam2, path, [point(40, 40, (160, 120))])
    bigger = image(17, (200, 150))
    serve_image(label_studio, bigger, path)
    prediction, timing = click(sam2, path, [point(50, 50, (200, 150))])
    assert "image-encoder" in timing
    assert iou(brush_mask(prediction["result"][0]), reference(bigger, [(50, 50)], [1], multimask=True)) >= 0.99


def test_concurrent_first_clicks_on_one_image_encode_it_once(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    pixels = image(13)
    path = serve_image(label_studio, pixels)
    runs = encoder_runs(sam2)
    spots = [(50, 40), (110, 90)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda at: click(sam2, path, [point(*at, (160, 120))]), spots))
    assert encoder_runs(sam2) == runs + 1
    for (answer, _), at in zip(answers, spots):
        assert iou(brush_mask(answer["result"][0]), reference(pixels, [at], [1], multimask=True)) >= 0.99
    # They overlapped: the click that did not encode waited for the one that did.
    phases = [server_timing(timing) for _, timing in answers]
    (encoded,) = [p for p in phases if "image-encoder" in p]
    (waited,) = [p for p in phases if "image-encoder" not in p]
    assert waited["total"] >= 0.5 * encoded["image-encoder"], phases


def test_concurrent_clicks_on_two_images_each_get_their_own_mask(sam2: Function, label_studio: RecordingServer, reference: Reference) -> None:
    images = [image(14), image(15)]
    paths = [serve_image(label_studio, pixels) for pixels in images]
    at = (80, 60)
    expected = [reference(pixels, [at], [1], multimask=True) for pixels in images]
    assert iou(expected[0], expected[1]) < 0.95  # the two images give different masks
    for _ in range(2):  # first clicks (both encoding at once), then follow-ups from the cache
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda path: click(sam2, path, [point(*at, (160, 120))])[0], paths))
        assert [iou(brush_mask(a["result"][0]), e) >= 0.99 for a, e in zip(answers, expected)] == [True, True]


def test_eight_annotators_clicking_at_once_are_all_served(sam2: Function, label_studio: RecordingServer) -> None:
    """Two prediction slots (MAX_CONCURRENT_PREDICTIONS=2) and eight clicks at once on two
    images: the clicks beyond the slots wait their turn (ADMIT_TIMEOUT) instead of failing,
    and each gets exactly the mask a click alone gets."""
    paths = [serve_image(label_studio, image(seed)) for seed in (41, 42)]
    spots = [(40, 40), (80, 60), (120, 90), (60, 100)]
    clicks = [(path, at) for path in paths for at in spots]
    serial = [click(sam2, path, [point(*at, (160, 120))])[0] for path, at in clicks]  # also encodes both images
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: click(sam2, c[0], [point(*c[1], (160, 120))])[0], clicks))  # each asserts 200
    def masks(prediction: dict[str, Any]) -> list[Any]:  # region ids are random
        return [(r["value"], r["score"]) for r in prediction["result"]]

    assert [masks(a) for a in answers] == [masks(s) for s in serial]
    assert all(a["result"] for a in answers)


def test_the_cache_keeps_only_what_it_is_allowed(tmp_path: Path, weights: Path, label_studio: RecordingServer,
                                                 reference: Reference) -> None:  # fmt: skip
    """Also label-studio-ml-backend's names for the model: MODEL_CONFIG with a packaged config
    and MODEL_CHECKPOINT as an absolute path (it joins its checkpoints folder with the name, so
    an absolute path wins there too)."""
    elsewhere = tmp_path / "elsewhere" / "my-sam.pt"
    elsewhere.parent.mkdir()
    shutil.copyfile(weights / TINY_CHECKPOINT, elsewhere)
    fn = serve_sam2(tmp_path / "fn", tmp_path / "empty", label_studio, EMBEDDING_CACHE_ENTRIES="1", EMBEDDING_URL_TTL="0",
                    MODEL_SIZE="large", MODEL_CONFIG="configs/sam2.1/sam2.1_hiera_t.yaml", MODEL_CHECKPOINT=str(elsewhere))  # fmt: skip
    try:
        fn.wait_ready()
        assert call("GET", fn.url + "/health").json()["model_version"].startswith("sam2-my-sam@")
        a, b = serve_image(label_studio, image(21)), serve_image(label_studio, image(22))
        for path in (a, b, a):
            click(fn, path, [point(80, 60, (160, 120))])
        assert encoder_runs(fn) == 3  # b pushed a out
        click(fn, a, [point(20, 20, (160, 120))])
        assert encoder_runs(fn) == 3  # fetched again (EMBEDDING_URL_TTL=0), same bytes: not encoded
        replaced = image(23)
        serve_image(label_studio, replaced, a)  # same size, other pixels
        prediction, _ = click(fn, a, [point(80, 60, (160, 120))])
        assert encoder_runs(fn) == 4
        assert iou(brush_mask(prediction["result"][0]), reference(replaced, [(80, 60)], [1], multimask=True)) >= 0.99
    finally:
        fn.close()


# -- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"MODEL_CHECKPOINT": "missing.pt"}, "MODEL_CHECKPOINT: model_path 'missing.pt': no such weights file"),
        ({"MODEL_CHECKPOINT": "corrupt.pt"}, "cannot read SAM 2 checkpoint"),
        ({"MODEL_SIZE": "small"}, "no such weights file"),  # sam2.1_hiera_small.pt is not there
        ({"MODEL_CONFIG": "configs/sam2.1/sam2.1_hiera_s.yaml", "MODEL_CHECKPOINT": TINY_CHECKPOINT}, "does not fit"),
        ({"MODEL_CONFIG": "configs/nope.yaml", "MODEL_CHECKPOINT": TINY_CHECKPOINT}, "cannot build SAM 2 from MODEL_CONFIG"),
    ],
)
def test_an_unusable_checkpoint_fails_startup_with_the_reason(
    tmp_path: Path, weights: Path, label_studio: RecordingServer, env: dict[str, str], reason: str
) -> None:
    fn = serve_sam2(tmp_path, weights, label_studio, **env)
    try:
        with pytest.raises(RuntimeError, match="failed to load"):
            fn.wait_ready()
        health = call("GET", fn.url + "/health")
        assert health.status == 503
        answer = health.json()
        assert answer["status"] == "FAILED" and reason in answer["detail"], answer
    finally:
        fn.close()


def test_no_network_was_attempted(sam2: Function, label_studio: RecordingServer) -> None:
    click(sam2, serve_image(label_studio, image(31)), [point(80, 60, (160, 120))])
    assert network_attempts(sam2.log_path.parent) == ""
