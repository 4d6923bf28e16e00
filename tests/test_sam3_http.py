"""The SAM 3 function over real HTTP: `lsfn serve sam3` with the tiny random SAM 3 of
tests/sam3_models.py, images served by a stand-in Label Studio, the network blocked for the
function's process. Masks are decoded with label-studio-sdk and compared with the engine run
here on the same weights (tests/test_sam3_engine.py holds the engine to transformers' own
Sam3Model and Sam3TrackerModel). The tiny model's scores lie between 0.13 and 0.35, hence the
low thresholds. A real Label Studio drives it at the end: batch pre-annotation with label
names, an interactive click, a typed prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsfn.functions.sam3.engine import Sam3Engine
from tests import sam3_models, synthetic
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.servers import RecordingServer
from tests.serving import Function, call, network_attempts, network_guard
from tests.test_e2e import lsfn_connect, make_project, ml_backend, retrieve_predictions, stored, tasks_by_image
from tests.test_sam2_http import LEGACY_KEY, brush_mask, iou, metric, point, serve_image

SIZE = (160, 120)
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image">
    <Label value="cat" predicted_values="cat,kitty"/><Label value="dog"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>
  <RectangleLabels name="example" toName="image" exemplar="true"><Label value="cat"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>
  <TextArea name="prompt" toName="image"/>
</View>"""
THRESHOLD = "0.2"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sam3-weights")
    (root / "sam3").symlink_to(sam3_models.model_dir())
    return root


@pytest.fixture(scope="module")
def engine(weights: Path) -> Sam3Engine:
    import torch

    torch.set_num_threads(1)
    return Sam3Engine.load(weights / "sam3", "cpu")


def serve(tmp: Path, weights: Path, label_studio_url: str, **env: str) -> Function:
    return Function("sam3", tmp, {**network_guard(tmp), "LABEL_STUDIO_URL": label_studio_url, "LABEL_STUDIO_API_KEY": LEGACY_KEY,
                                  "MODEL_SCORE_THRESHOLD": THRESHOLD, "OMP_NUM_THREADS": "1", **env}, weights)  # fmt: skip


@pytest.fixture(scope="module")
def sam3(tmp_path_factory: pytest.TempPathFactory, weights: Path, label_studio: RecordingServer) -> Iterator[Function]:
    fn = serve(tmp_path_factory.mktemp("sam3"), weights, label_studio.url)
    fn.wait_ready()
    yield fn
    fn.close()


def image(seed: int) -> np.ndarray:
    return synthetic.make_image(np.random.default_rng(seed), size=SIZE, shapes=(2, 3))[0]


def predict(fn: Function, paths: list[str], context: dict[str, Any] | None = None, config: str = CONFIG) -> list[dict[str, Any]]:
    body = {"tasks": [{"id": i + 1, "data": {"image": p}} for i, p in enumerate(paths)], "label_config": config, "project": "9.1",
            "params": {"login": None, "password": None, "context": context}}  # fmt: skip
    answer = call("POST", fn.url + "/predict", body)
    assert answer.status == 200, answer.data[:2000]
    return answer.json()["results"]


def masks_by_label(prediction: dict[str, Any]) -> list[tuple[str, float, np.ndarray]]:
    return [(r["value"]["brushlabels"][0], r["score"], brush_mask(r)) for r in prediction["result"] if r["type"] == "brushlabels"]


def expected(engine: Sam3Engine, pixels: np.ndarray, phrases: list[str], labels: list[str], threshold: float = 0.2,
             exemplars: list[tuple[tuple[float, float, float, float], bool]] | None = None) -> list[tuple[str, float, np.ndarray]]:  # fmt: skip
    """The engine's instances with their labels, best first, a label's duplicates (mask IoU >= 0.7) kept once."""
    (embedding,) = engine.embed([pixels])
    found = engine.concept(embedding, phrases, exemplars or [], threshold=threshold, mask_threshold=0.5, max_instances=100)
    ranked = sorted(((labels[i], inst) for i, per in enumerate(found) for inst in per), key=lambda p: -p[1].score)
    kept: list[tuple[str, float, np.ndarray]] = []
    for label, inst in ranked:
        if all(label != other or iou(inst.mask, mask) < 0.7 for other, _, mask in kept):
            kept.append((label, inst.score, inst.mask))
    return kept


# -- batch pre-annotation: label names as concept prompts ----------------------------------------


def test_batch_pre_annotation_finds_every_instance_of_each_label(sam3: Function, label_studio: RecordingServer,
                                                                  engine: Sam3Engine) -> None:  # fmt: skip
    images = [image(1), image(2), image(3)]
    before = metric(sam3, "lsfn_model_calls_total", call="sam3_vision_encoder")
    text_before = metric(sam3, "lsfn_model_calls_total", call="sam3_text_encoder")
    results = predict(sam3, [serve_image(label_studio, pixels) for pixels in images])
    # One vision-encoder run per image (one image per pass on a CPU), the label names encoded once.
    assert metric(sam3, "lsfn_model_calls_total", call="sam3_vision_encoder") == before + 3
    assert metric(sam3, "lsfn_model_calls_total", call="sam3_text_encoder") == text_before + 1
    for pixels, prediction in zip(images, results):
        got = masks_by_label(prediction)
        want = expected(engine, pixels, ["cat", "kitty", "dog"], ["cat", "cat", "dog"])
        assert got and len(got) == len(want)
        for (label, score, mask), (want_label, want_score, want_mask) in zip(got, want):
            assert label == want_label and score == pytest.approx(want_score, abs=1e-4) and iou(mask, want_mask) >= 0.99
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(got) and {r["from_name"] for r in boxes} == {"box"}  # not the exemplar control
        for label, _, mask in got:  # a synonym's duplicate was merged
            same = [m for lab, _, m in got if lab == label and m is not mask]
            assert all(iou(mask, other) < 0.7 for other in same)


def test_the_threshold_and_the_instance_cap_bound_the_answer(tmp_path: Path, weights: Path, label_studio: RecordingServer,
                                                             sam3: Function) -> None:  # fmt: skip
    path = serve_image(label_studio, image(4))
    everything = masks_by_label(predict(sam3, [path])[0])
    stricter = CONFIG.replace('<BrushLabels name="mask" toName="image">', '<BrushLabels name="mask" toName="image" model_score_threshold="0.3">')
    strict = masks_by_label(predict(sam3, [path], config=stricter)[0])
    assert len(strict) < len(everything) and all(score > 0.3 for _, score, _ in strict)
    capped = serve(tmp_path, weights, label_studio.url, MAX_INSTANCES="2")
    try:
        capped.wait_ready()
        top = masks_by_label(predict(capped, [path])[0])
        assert [score for _, score, _ in top] == sorted((s for _, s, _ in everything), reverse=True)[:2]
    finally:
        capped.close()


# -- interactive: clicks, then a typed prompt on the same embedding ---------------------------------


def test_a_click_then_a_typed_prompt_use_one_embedding(sam3: Function, label_studio: RecordingServer, engine: Sam3Engine) -> None:
    pixels = image(5)
    path = serve_image(label_studio, pixels)
    before = metric(sam3, "lsfn_model_calls_total", call="sam3_vision_encoder")
    (prediction,) = predict(sam3, [path], {"result": [point(80, 60, SIZE, label="cat")]})
    (region,) = prediction["result"]
    (embedding,) = engine.embed([pixels])
    masks, scores = engine.track(embedding, np.array([[80.0, 60.0]]), np.array([True]), np.zeros((0, 4)), multimask=True)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"]
    assert iou(brush_mask(region), masks[0]) >= 0.99 and region["score"] == pytest.approx(float(scores[0]), abs=1e-4)

    typed = {"result": [{"value": {"text": ["fluffy kitty_cat"]}, "from_name": "prompt", "to_name": "image", "type": "textarea"}]}
    (prediction,) = predict(sam3, [path], typed)
    want = expected(engine, pixels, ["fluffy kitty"], ["cat"])
    got = masks_by_label(prediction)
    assert len(got) == len(want) and all(label == "cat" for label, _, _ in got)
    assert all(iou(m, w) >= 0.99 for (_, _, m), (_, _, w) in zip(got, want))
    # The typed prompt reused the click's embedding: one vision-encoder run for both.
    assert metric(sam3, "lsfn_model_calls_total", call="sam3_vision_encoder") == before + 1


def test_an_exemplar_box_goes_with_the_typed_concept(sam3: Function, label_studio: RecordingServer, engine: Sam3Engine) -> None:
    pixels = image(6)
    path = serve_image(label_studio, pixels)
    exemplar = {"original_width": 160, "original_height": 120, "image_rotation": 0, "from_name": "example", "to_name": "image",
                "type": "rectanglelabels", "value": {"x": 25, "y": 25, "width": 25, "height": 25, "rotation": 0,
                                                     "rectanglelabels": ["cat"]}}  # fmt: skip
    typed = {"value": {"text": ["cat"]}, "from_name": "prompt", "to_name": "image", "type": "textarea"}
    (prediction,) = predict(sam3, [path], {"result": [typed, exemplar]})
    got = masks_by_label(prediction)
    want = expected(engine, pixels, ["cat"], ["cat"], exemplars=[((40.0, 30.0, 80.0, 60.0), True)])
    without = expected(engine, pixels, ["cat"], ["cat"])
    assert len(got) == len(want) and all(iou(m, w) >= 0.99 for (_, _, m), (_, _, w) in zip(got, want))
    assert [round(s, 4) for _, s, _ in want] != [round(s, 4) for _, s, _ in without]  # the exemplar changed the answer


def test_a_negative_click_and_a_polygon_config(sam3: Function, label_studio: RecordingServer, engine: Sam3Engine) -> None:
    pixels = image(9)
    path = serve_image(label_studio, pixels)
    regions = [point(80, 60, SIZE, label="cat"), point(40, 30, SIZE, label="cat", positive=False)]
    (prediction,) = predict(sam3, [path], {"result": regions})
    (embedding,) = engine.embed([pixels])
    masks, _ = engine.track(embedding, np.array([[80.0, 60.0], [40.0, 30.0]]), np.array([True, False]), np.zeros((0, 4)), multimask=False)
    assert iou(brush_mask(prediction["result"][0]), masks[0]) >= 0.99
    polygons = CONFIG.replace("BrushLabels", "PolygonLabels")
    (batch,) = predict(sam3, [path], config=polygons)
    assert batch["result"] and {r["type"] for r in batch["result"]} == {"polygonlabels", "rectanglelabels"}
    assert all(len(r["value"]["points"]) >= 3 for r in batch["result"] if r["type"] == "polygonlabels")


def test_no_network_was_attempted(sam3: Function, label_studio: RecordingServer) -> None:
    assert network_attempts(sam3.log_path.parent) == ""


# -- through a real Label Studio ----------------------------------------------------------------------


@pytest.mark.e2e
def test_label_studio_pre_annotates_clicks_and_prompts_with_sam3(tmp_path: Path, weights: Path,
                                                                 label_studio_server: LabelStudioServer) -> None:  # fmt: skip
    ls = label_studio_server
    fn = Function("sam3", tmp_path, {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
                                     "MODEL_SCORE_THRESHOLD": THRESHOLD}, weights)  # fmt: skip
    try:
        fn.wait_ready()
        project = make_project(ls, CONFIG, [image(7), image(8)])
        connected = lsfn_connect(ls, project, fn.url, "--interactive")
        assert connected.returncode == 0, connected.stdout + connected.stderr
        retrieve_predictions(ls, project)
        tasks = tasks_by_image(ls, project)
        for task in tasks.values():
            (prediction,) = stored(ls, task)
            labels = {r["value"].get("brushlabels", r["value"].get("rectanglelabels", [None]))[0] for r in prediction["result"]}
            assert prediction["result"] and labels <= {"cat", "dog"} and prediction["model_version"].startswith("sam3-sam3@")
        backend = ml_backend(ls, project)
        for context in ({"result": [point(80, 60, SIZE, label="cat")]},
                        {"result": [{"value": {"text": ["dog"]}, "from_name": "prompt", "to_name": "image", "type": "textarea"}]}):
            answer = ls.api("POST", f"/api/ml/{backend['id']}/interactive-annotating", {"task": tasks[0]["id"], "context": context})
            assert answer.status == 200, answer.data
            result = answer.json()["data"]["result"]
            assert result and result[0]["type"] == "brushlabels", answer.json()
    finally:
        fn.close()


def test_the_front_door_answers_the_version_from_the_manifest_alone(tmp_path: Path, weights: Path) -> None:
    """The front door's image holds the weights' manifest, not the 3 GB folder: it answers the
    same model version as the function (Label Studio's /setup while the GPU side is cold)."""
    from lsfn.functions.sam3.spec import Sam3Spec
    from lsfn.shared.settings import Settings
    from lsfn.shared.weights import file_sha256, write_manifest

    folder = weights / "sam3"
    write_manifest(tmp_path / "weights-manifest.json", [
        {"name": f"sam3/{p.name}", "sha256": file_sha256(p), "bytes": p.stat().st_size, "pinned": False}
        for p in sorted(folder.iterdir()) if p.is_file()])  # fmt: skip
    door = Sam3Spec(Settings(MODEL_ROOT=tmp_path)).version_for(None)
    function = Sam3Spec(Settings(MODEL_ROOT=weights)).version_for(None)
    assert door == function and door.startswith("sam3-sam3@")
