"""The Grounding DINO and Grounding SAM functions over real HTTP: `lsfn serve grounding_dino`
and `lsfn serve grounding_sam` with a tiny random-weight Grounding DINO (tests/dino_models.py)
and a tiny random-weight SAM 2.1, the network blocked for their processes, the images served by
a stand-in Label Studio. Boxes are checked against the same transformers model run here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import configs, synthetic
from tests.dino_models import write_model
from tests.sam2_models import TINY_CHECKPOINT, Reference, write_checkpoint
from tests.servers import Answer, RecordingServer
from tests.serving import Function, call, network_attempts, network_guard
from tests.test_sam2_http import LEGACY_KEY, brush_mask, iou, metric, server_timing

DINO_FOLDER = "grounding-dino-tiny"
BOXES = configs.TEXT_PROMPT_BOXES
MASKS = BOXES.replace("RectangleLabels", "BrushLabels")
OUTLINES = BOXES.replace("RectangleLabels", "PolygonLabels")
SIZE = (160, 120)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grounding-weights")
    write_model(root / DINO_FOLDER)
    write_checkpoint(root / TINY_CHECKPOINT)
    return root


def serve(name: str, tmp: Path, weights: Path, label_studio: RecordingServer, **env: str) -> Function:
    full = {**network_guard(tmp), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_KEY,
            "MODEL_SIZE": "tiny", **env}  # fmt: skip
    return Function(name, tmp, full, weights)


@pytest.fixture(scope="module")
def dino(tmp_path_factory: pytest.TempPathFactory, weights: Path, label_studio: RecordingServer) -> Iterator[Function]:
    # Batches of 8 on the CPU too (the default there is 1), to test batching.
    fn = serve("grounding_dino", tmp_path_factory.mktemp("dino"), weights, label_studio, GROUNDING_DINO_BATCH_SIZE="8")
    fn.wait_ready()
    yield fn
    fn.close()


@pytest.fixture(scope="module")
def gsam(tmp_path_factory: pytest.TempPathFactory, weights: Path, label_studio: RecordingServer) -> Iterator[Function]:
    fn = serve("grounding_sam", tmp_path_factory.mktemp("gsam"), weights, label_studio, BOX_THRESHOLD="0.6", TEXT_THRESHOLD="0.2")
    fn.wait_ready()
    yield fn
    fn.close()


class Detector:
    """The same Grounding DINO folder through transformers directly, for the expected boxes."""

    def __init__(self, folder: Path) -> None:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self.model = GroundingDinoForObjectDetection.from_pretrained(folder).eval()
        self.processor = GroundingDinoProcessor.from_pretrained(folder)

    def __call__(self, pixels: np.ndarray, caption: str, box: float, text: float) -> list[tuple[list[float], float]]:
        import torch

        inputs = self.processor(images=[pixels], text=[caption], return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs)
        (found,) = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=box, text_threshold=text, target_sizes=[pixels.shape[:2]]
        )
        found = [(b.tolist(), float(s)) for b, s in zip(found["boxes"], found["scores"])]
        return sorted(found, key=lambda item: -item[1])  # the function answers best first


@pytest.fixture(scope="module")
def detector(weights: Path) -> Detector:
    return Detector(weights / DINO_FOLDER)


_served = 0


def image(seed: int) -> np.ndarray:
    pixels, _ = synthetic.make_image(np.random.default_rng(seed), size=SIZE, shapes=(2, 3))
    return pixels


def serve_image(server: RecordingServer, pixels: np.ndarray) -> str:
    global _served
    _served += 1
    path = f"/data/upload/8/g-{_served}.png"
    server.routes[path] = Answer(200, synthetic.png_bytes(pixels), {"Content-Type": "image/png"})
    return path


def typed(text: str) -> dict[str, Any]:
    return {"result": [{"value": {"text": [text]}, "id": "tx1", "from_name": "prompt", "to_name": "image",
                        "type": "textarea", "origin": "manual"}]}  # fmt: skip


def predict(fn: Function, paths: list[str], config: str, context: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], str]:
    body = {"tasks": [{"id": i + 1, "data": {"image": p}} for i, p in enumerate(paths)], "label_config": config,
            "project": "8.1", "params": {"context": context}}  # fmt: skip
    response = call("POST", fn.url + "/predict", body)
    assert response.status == 200, response.data[:2000]
    items = response.json()["results"]
    assert len(items) == len(paths) and all("result" in item for item in items), items
    return items, response.headers.get("Server-Timing", "")


def pixel_box(region: dict[str, Any]) -> list[float]:
    v, w, h = region["value"], region["original_width"], region["original_height"]
    return [v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100, (v["y"] + v["height"]) * h / 100]


# -- Grounding DINO -----------------------------------------------------------------------------


def test_a_typed_prompt_boxes_what_the_model_finds(dino: Function, label_studio: RecordingServer, detector: Detector) -> None:
    pixels = image(1)
    (item,), timing = predict(dino, [serve_image(label_studio, pixels)], BOXES, typed("brown cat_cats. football player"))
    expected = detector(pixels, "brown cat . football player .", 0.3, 0.25)
    assert expected and len(item["result"]) == len(expected)  # typed: nothing is dropped
    for region, (box, score) in zip(item["result"], expected):
        assert region["type"] == "rectanglelabels" and region["from_name"] == "label"
        assert region["value"]["rectanglelabels"][0] in ("cats",)  # both phrases say cats (the first label)
        assert (region["original_width"], region["original_height"]) == SIZE
        assert region["score"] == pytest.approx(score, abs=1e-4)
        assert pixel_box(region) == pytest.approx([min(max(c, 0), lim) for c, lim in zip(box, SIZE * 2)], abs=0.05)
    assert "detector;dur=" in timing
    assert item["model_version"].startswith("grounding-dino-grounding-dino-tiny@")


def test_without_a_prompt_the_labels_are_the_prompt(dino: Function, label_studio: RecordingServer, detector: Detector) -> None:
    images = [image(2), image(3), image(4)]
    items, _ = predict(dino, [serve_image(label_studio, p) for p in images], BOXES)
    for pixels, item in zip(images, items):
        found = detector(pixels, "cat . kitten . house . traffic light .", 0.3, 0.25)
        labels = [r["value"]["rectanglelabels"][0] for r in item["result"]]
        assert set(labels) <= {"cats", "house", "traffic_light"} and len(labels) <= len(found)
    assert sum(len(i["result"]) for i in items) > 0


def test_the_control_threshold_overrides_box_threshold(dino: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(5))
    (loose,), _ = predict(dino, [path], BOXES, typed("cat"))
    strict_config = BOXES.replace('<RectangleLabels name="label"', '<RectangleLabels name="label" model_score_threshold="0.95"')
    (strict,), _ = predict(dino, [path], strict_config, typed("cat"))
    assert all(r["score"] >= 0.95 for r in strict["result"]) and all(r["score"] >= 0.3 for r in loose["result"])
    assert len(strict["result"]) < len(loose["result"])


def test_a_batch_gives_what_single_calls_give(dino: Function, label_studio: RecordingServer) -> None:
    paths = [serve_image(label_studio, image(10 + i)) for i in range(8)]
    passes = metric(dino, "lsfn_model_calls_total", call="grounding_dino")
    batched, timing = predict(dino, paths, BOXES, typed("red square. white circle_house"))
    assert "detector;dur=" in timing
    assert metric(dino, "lsfn_model_calls_total", call="grounding_dino") == passes + 1  # one forward pass
    for path, item in zip(paths, batched):
        (single,), _ = predict(dino, [path], BOXES, typed("red square. white circle_house"))
        assert [r["value"]["rectanglelabels"] for r in item["result"]] == [r["value"]["rectanglelabels"] for r in single["result"]]
        assert np.allclose([pixel_box(r) for r in item["result"]], [pixel_box(r) for r in single["result"]], atol=0.01)


def test_images_of_different_sizes_share_a_forward_pass(dino: Function, label_studio: RecordingServer) -> None:
    sizes = [(160, 120), (90, 200), (240, 100)]
    images = [synthetic.make_image(np.random.default_rng(40 + i), size=size, shapes=(1, 2))[0] for i, size in enumerate(sizes)]
    passes = metric(dino, "lsfn_model_calls_total", call="grounding_dino")
    items, _ = predict(dino, [serve_image(label_studio, p) for p in images], BOXES, typed("cat"))
    assert metric(dino, "lsfn_model_calls_total", call="grounding_dino") == passes + 1
    for (width, height), item in zip(sizes, items):
        assert item["result"]
        for region in item["result"]:
            assert (region["original_width"], region["original_height"]) == (width, height)
            x0, y0, x1, y1 = pixel_box(region)
            assert 0 <= x0 <= x1 <= width + 1e-6 and 0 <= y0 <= y1 <= height + 1e-6


def test_a_threshold_outside_0_1_is_refused(dino: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(7))
    for value in ("-1", "1.5", "nan"):
        config = BOXES.replace('<RectangleLabels name="label"', f'<RectangleLabels name="label" model_score_threshold="{value}"')
        body = {"tasks": [{"id": 1, "data": {"image": path}}], "label_config": config, "params": {"context": typed("cat")}}
        response = call("POST", dino.url + "/predict", body)
        assert response.status == 422 and "between 0 and 1" in response.json()["detail"], (value, response.data)


def test_a_prompt_too_long_for_the_text_encoder_is_refused(dino: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(6))
    body = {"tasks": [{"id": 1, "data": {"image": path}}], "label_config": BOXES,
            "params": {"context": typed(". ".join(f"red cat brown dog white house {i}" for i in range(40)))}}  # fmt: skip
    response = call("POST", dino.url + "/predict", body)
    assert response.status == 422 and "Grounding DINO reads at most 256" in response.json()["detail"], response.data


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"GROUNDING_DINO_MODEL": "nowhere"}, "GROUNDING_DINO_MODEL: no model folder"),
        ({"GROUNDING_DINO_MODEL": "broken"}, "cannot load Grounding DINO"),
        ({"GROUNDING_DINO_WEIGHTS": "groundingdino_swint_ogc.pth"}, "groundingdino-py checkpoints are not read here"),
    ],
)
def test_an_unusable_model_fails_startup_with_the_reason(tmp_path: Path, weights: Path, label_studio: RecordingServer,
                                                         env: dict[str, str], reason: str) -> None:  # fmt: skip
    (weights / "broken").mkdir(exist_ok=True)
    (weights / "broken" / "config.json").write_text("{not json")
    fn = serve("grounding_dino", tmp_path, weights, label_studio, **env)
    try:
        with pytest.raises(RuntimeError, match="failed to load"):
            fn.wait_ready()
        answer = call("GET", fn.url + "/health").json()
        assert answer["status"] == "FAILED" and reason in answer["detail"], answer
    finally:
        fn.close()


# -- Grounding SAM -------------------------------------------------------------------------------


def test_grounding_sam_segments_every_box_in_one_decoder_call(gsam: Function, label_studio: RecordingServer,
                                                             detector: Detector, weights: Path) -> None:  # fmt: skip
    images = [image(20), image(21)]
    paths = [serve_image(label_studio, p) for p in images]
    encoders = metric(gsam, "lsfn_model_calls_total", call="sam2_image_encoder")
    decoders = metric(gsam, "lsfn_model_calls_total", call="sam2_mask_decoder")
    items, timing = predict(gsam, paths, MASKS, typed("cat"))
    reference = Reference(weights / TINY_CHECKPOINT)
    with_boxes = 0
    for pixels, item in zip(images, items):
        expected = detector(pixels, "cat .", 0.6, 0.2)  # BOX_THRESHOLD and TEXT_THRESHOLD from the env
        assert len(item["result"]) == len(expected)
        with_boxes += bool(expected)
        for region, (box, _) in zip(item["result"], expected):
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cats"]
            mask = brush_mask(region)
            assert mask.shape == (SIZE[1], SIZE[0])
            assert iou(mask, reference(pixels, box=tuple(box))) >= 0.99  # SAM 2 on the detector's box
    assert with_boxes == 2
    assert metric(gsam, "lsfn_model_calls_total", call="sam2_image_encoder") == encoders + 2
    assert metric(gsam, "lsfn_model_calls_total", call="sam2_mask_decoder") == decoders + 2  # one per image
    assert {"detector", "image-encoder", "mask-decoder", "rle"} <= set(server_timing(timing))
    # Another prompt on the same images: the embeddings are reused.
    predict(gsam, paths, MASKS, typed("house"))
    assert metric(gsam, "lsfn_model_calls_total", call="sam2_image_encoder") == encoders + 2


def test_grounding_sam_outlines_for_a_polygon_config(gsam: Function, label_studio: RecordingServer) -> None:
    (item,), _ = predict(gsam, [serve_image(label_studio, image(22))], OUTLINES)
    assert item["result"], item
    for region in item["result"]:
        assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"][0] in ("cats", "house", "traffic_light")
        points = np.array(region["value"]["points"])
        assert points.shape[0] >= 3 and (points >= 0).all() and (points <= 100).all()


def test_nothing_reaches_the_network(dino: Function, gsam: Function, label_studio: RecordingServer) -> None:
    path = serve_image(label_studio, image(30))
    predict(dino, [path], BOXES, typed("cat"))
    predict(gsam, [path], MASKS, typed("cat"))
    for fn in (dino, gsam):
        assert network_attempts(fn.log_path.parent) == ""
