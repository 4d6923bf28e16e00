"""End to end: a real Label Studio server uses the YOLO and SAM 2 functions as its projects' models.

Everything is driven through Label Studio's REST API, as a user's browser would; the function
(`lsfn serve yolo`, tiny models trained on synthetic shapes) fetches the uploaded images from
Label Studio with its API token."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests import synthetic, yolo_models
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.sam2_models import TINY_CHECKPOINT, Reference, write_checkpoint
from tests.serving import Function
from tests.test_sam2_http import SMART as SAM2_SMART
from tests.test_sam2_http import box as sam2_box
from tests.test_sam2_http import brush_mask as sam2_brush_mask
from tests.test_sam2_http import iou as sam2_iou
from tests.test_sam2_http import point as sam2_point
from tests.test_yolo_http import EXPECTED_LABEL, RECT, SEGMENT, box_iou, held_out, iou

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def label_studio(label_studio_server: LabelStudioServer) -> LabelStudioServer:
    return label_studio_server


USER, PASSWORD, SECRET = "fnuser", "fnpass", "hook-secret"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-weights")
    shutil.copyfile(yolo_models.detector(), root / "shapes-det.pt")
    shutil.copyfile(yolo_models.segmenter(), root / "shapes-seg.pt")
    return root


def serve_yolo(tmp: Path, label_studio: LabelStudioServer, weights: Path, port: int | None = None,
               **env: str) -> Function:  # fmt: skip
    full = {**yolo_models.offline_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, **env}
    fn = Function("yolo", tmp, full, weights, port=port)
    fn.wait_ready()
    return fn


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer, weights: Path) -> Iterator[Function]:
    fn = serve_yolo(tmp_path_factory.mktemp("e2e-yolo"), label_studio, weights)
    yield fn
    fn.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer, weights: Path) -> Iterator[Function]:
    """The function with basic auth and a webhook secret configured."""
    fn = serve_yolo(tmp_path_factory.mktemp("e2e-guarded"), label_studio, weights,
                    BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, WEBHOOK_SECRET=SECRET)  # fmt: skip
    yield fn
    fn.close()


def lsfn_connect(label_studio: LabelStudioServer, project: int, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lsfn.shared.cli", "connect", url, "--project", str(project),
               "--label-studio", label_studio.url, "--token", LEGACY_TOKEN, *extra]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def make_project(label_studio: LabelStudioServer, config: str, images: list[np.ndarray]) -> int:
    response = label_studio.api("POST", "/api/projects", {"title": "e2e", "label_config": config})
    assert response.status == 201, response.data
    project = response.json()["id"]
    if images:
        upload_images(label_studio, project, images)
    return project


def upload_images(label_studio: LabelStudioServer, project: int, images: list[np.ndarray], first: int = 0) -> None:
    """One task per image, uploaded as img<first + i>.png."""
    # One form field per file: several files under one field name import only the last (PROTOCOL.md §8).
    fields = {f"file{i}": (f"img{first + i}.png", synthetic.png_bytes(pixels), "image/png") for i, pixels in enumerate(images)}
    response = label_studio.http.request(
        "POST", f"{label_studio.url}/api/projects/{project}/import",
        headers={"Authorization": f"Token {LEGACY_TOKEN}"}, fields=fields,
    )  # fmt: skip
    assert response.status == 201, response.data


def tasks_by_image(label_studio: LabelStudioServer, project: int) -> dict[int, dict]:
    """The project's tasks by the index of the uploaded image (img<i>.png)."""
    answer = label_studio.api("GET", f"/api/tasks?project={project}&page_size=100").json()
    tasks = answer["tasks"] if isinstance(answer, dict) else answer
    return {int(t["data"]["image"].rsplit("img", 1)[1].split(".")[0]): t for t in tasks}


def retrieve_predictions(label_studio: LabelStudioServer, project: int) -> None:
    """The Data Manager's "Retrieve predictions" for every task."""
    selected = {"selectedItems": {"all": True, "excluded": []}}
    response = label_studio.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", selected)
    assert response.status == 200, response.data


def stored(label_studio: LabelStudioServer, task: dict) -> list[dict]:
    return label_studio.api("GET", f"/api/predictions?task={task['id']}").json()


def ml_backend(label_studio: LabelStudioServer, project: int) -> dict:
    (backend,) = label_studio.api("GET", f"/api/ml?project={project}").json()
    return label_studio.api("GET", f"/api/ml/{backend['id']}").json()


def test_batch_predictions_are_stored_by_label_studio(label_studio: LabelStudioServer, yolo: Function) -> None:
    data = held_out(6, (160, 120), seed=1001)
    project = make_project(label_studio, RECT, [pixels for pixels, _ in data])
    connected = lsfn_connect(label_studio, project, yolo.url)
    assert connected.returncode == 0, connected.stdout + connected.stderr
    assert "connected" in connected.stdout and "readable with this legacy token" in connected.stdout
    retrieve_predictions(label_studio, project)

    found = total = 0
    for index, task in tasks_by_image(label_studio, project).items():
        predictions = stored(label_studio, task)
        assert len(predictions) == 1, predictions
        (prediction,) = predictions
        assert prediction["model_version"].startswith("yolo-shapes-det@") and prediction["score"] > 0.25
        pixels, shapes = data[index]
        height, width = pixels.shape[:2]
        for shape in shapes:
            total += 1
            for region in prediction["result"]:
                v = region["value"]
                box = (v["x"] * width / 100, v["y"] * height / 100,
                       (v["x"] + v["width"]) * width / 100, (v["y"] + v["height"]) * height / 100)
                if v["rectanglelabels"] == [EXPECTED_LABEL[shape.kind]] and box_iou(box, shape.bbox()) >= 0.5:
                    found += 1
                    break
    assert total and found / total >= 0.9, f"{found}/{total}"


def test_polygons_and_brush_masks_are_stored(label_studio: LabelStudioServer, yolo: Function) -> None:
    data = held_out(4, (160, 120), seed=1002)
    project = make_project(label_studio, SEGMENT, [pixels for pixels, _ in data])
    assert lsfn_connect(label_studio, project, yolo.url).returncode == 0
    retrieve_predictions(label_studio, project)
    polygon_ious, brush_ious = [], []
    for index, task in tasks_by_image(label_studio, project).items():
        (prediction,) = stored(label_studio, task)
        pixels, shapes = data[index]
        height, width = pixels.shape[:2]
        for shape in shapes:
            truth = shape.mask(height, width)
            brushes = [r for r in prediction["result"] if r["type"] == "brushlabels" and r["value"]["brushlabels"] == [shape.kind]]
            masks = [np.reshape(decode_rle(r["value"]["rle"]), (height, width, 4))[:, :, 3] > 0 for r in brushes]
            brush_ious.append(max((iou(m, truth) for m in masks), default=0.0))
            polygon_ious.append(any(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == [shape.kind]
                                    for r in prediction["result"]))  # fmt: skip
    assert np.mean(brush_ious) >= 0.7, brush_ious
    assert all(polygon_ious)


def test_a_personal_access_token_fetches_the_files(
    label_studio: LabelStudioServer, weights: Path, tmp_path: Path
) -> None:
    pat = label_studio.api("POST", "/api/token/", {}).json()["token"]
    fn = serve_yolo(tmp_path, label_studio, weights, LABEL_STUDIO_API_KEY=pat)
    try:
        data = held_out(2, (160, 120), seed=1003)
        project = make_project(label_studio, RECT, [pixels for pixels, _ in data])
        command = lsfn_connect(label_studio, project, fn.url)
        assert command.returncode == 0, command.stdout + command.stderr
        retrieve_predictions(label_studio, project)
        for task in tasks_by_image(label_studio, project).values():
            (prediction,) = stored(label_studio, task)
            assert prediction["result"]
    finally:
        fn.close()


def test_basic_auth_right_wrong_and_missing(label_studio: LabelStudioServer, guarded: Function) -> None:
    project = make_project(label_studio, RECT, [held_out(1, (160, 120), seed=1004)[0][0]])
    for extra in ((), ("--basic-auth", f"{USER}:wrong")):
        refused = lsfn_connect(label_studio, project, guarded.url, *extra)
        assert refused.returncode == 1
        # /health is public, /setup is not: Label Studio refuses the connection and says why.
        assert "Label Studio answered 400" in refused.stderr and "401 client error: unauthorized" in refused.stderr.lower()
    accepted = lsfn_connect(label_studio, project, guarded.url, "--basic-auth", f"{USER}:{PASSWORD}",
                            "--webhook-secret", SECRET, "--interactive")  # fmt: skip
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "X-Webhook-Secret header set" in accepted.stdout
    retrieve_predictions(label_studio, project)
    (task,) = tasks_by_image(label_studio, project).values()
    assert stored(label_studio, task)[0]["result"]


def test_interactive_prediction_reaches_the_function(label_studio: LabelStudioServer, guarded: Function) -> None:
    project = make_project(label_studio, RECT, [held_out(1, (160, 120), seed=1005, shapes=1)[0][0]])
    connected = lsfn_connect(label_studio, project, guarded.url, "--basic-auth", f"{USER}:{PASSWORD}", "--interactive")
    assert connected.returncode == 0, connected.stdout + connected.stderr
    backend = ml_backend(label_studio, project)
    (task,) = tasks_by_image(label_studio, project).values()
    click = {"result": [{"original_width": 160, "original_height": 120, "image_rotation": 0,
                         "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Box"]},
                         "is_positive": True, "id": "kp1", "from_name": "label", "to_name": "image",
                         "type": "keypointlabels", "origin": "manual"}]}  # fmt: skip
    response = label_studio.api("POST", f"/api/ml/{backend['id']}/interactive-annotating", {"task": task["id"], "context": click})
    assert response.status == 200, response.data
    answer = response.json()
    assert "errors" not in answer, answer
    assert answer["data"]["result"] and answer["data"]["result"][0]["type"] == "rectanglelabels"
    assert not stored(label_studio, task)  # interactive answers are not stored as predictions


def test_annotation_webhooks_carry_the_secret(label_studio: LabelStudioServer, guarded: Function) -> None:
    project = make_project(label_studio, RECT, [held_out(1, (160, 120), seed=1006)[0][0]])
    connected = lsfn_connect(label_studio, project, guarded.url, "--basic-auth", f"{USER}:{PASSWORD}",
                             "--webhook-secret", SECRET)  # fmt: skip
    assert connected.returncode == 0, connected.stdout + connected.stderr
    (task,) = tasks_by_image(label_studio, project).values()
    annotation = {"result": [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                              "value": {"x": 5, "y": 5, "width": 20, "height": 30, "rotation": 0,
                                        "rectanglelabels": ["Box"]}}]}  # fmt: skip

    def webhook_statuses() -> list[int]:
        return [r["status"] for r in guarded.logs() if r.get("path") == "/webhook"]

    before = len(webhook_statuses())
    assert label_studio.api("POST", f"/api/tasks/{task['id']}/annotations", annotation).status == 201
    assert webhook_statuses()[before:] == [200]  # Label Studio sends it synchronously (no Redis)
    # Without the header Label Studio's webhook carries no credentials: refused.
    hooks = label_studio.api("GET", f"/api/webhooks?project={project}").json()
    (hook,) = [h for h in hooks if h["url"].startswith(guarded.url)]
    label_studio.api("PATCH", f"/api/webhooks/{hook['id']}", {"url": hook["url"], "headers": {}})
    before = len(webhook_statuses())
    assert label_studio.api("POST", f"/api/tasks/{task['id']}/annotations", annotation).status == 201
    assert webhook_statuses()[before:] == [401]


def test_a_stopped_function_is_reported_and_a_restarted_one_works(
    label_studio: LabelStudioServer, weights: Path, tmp_path: Path
) -> None:
    fn = serve_yolo(tmp_path / "first", label_studio, weights)
    port = fn.port
    project = make_project(label_studio, RECT, [held_out(1, (160, 120), seed=1007)[0][0]])
    assert lsfn_connect(label_studio, project, fn.url).returncode == 0
    fn.close()
    backend = ml_backend(label_studio, project)  # runs a health check
    assert backend["state"] == "DI" and backend["readable_state"] == "Disconnected"
    retrieve_predictions(label_studio, project)  # Label Studio answers, stores nothing
    (task,) = tasks_by_image(label_studio, project).values()
    assert stored(label_studio, task) == []
    fn = serve_yolo(tmp_path / "again", label_studio, weights, port=port)
    try:
        assert ml_backend(label_studio, project)["state"] == "CO"
        retrieve_predictions(label_studio, project)
        assert stored(label_studio, task)[0]["result"]
    finally:
        fn.close()


# -- SAM 2 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam2_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("e2e-sam2-weights") / TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def sam2(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer, sam2_weights: Path) -> Iterator[Function]:
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "MODEL_SIZE": "tiny"}
    fn = Function("sam2", tmp_path_factory.mktemp("e2e-sam2"), env, sam2_weights.parent)
    fn.wait_ready()
    yield fn
    fn.close()


def test_sam2_click_and_box_through_label_studio(label_studio: LabelStudioServer, sam2: Function, sam2_weights: Path) -> None:
    """An annotator's smart keypoint click, then a box, on an uploaded image: Label Studio
    forwards each to the SAM 2 function and hands its brush mask back to the browser."""
    pixels = held_out(1, (160, 120), seed=1009, shapes=3)[0][0]
    project = make_project(label_studio, SAM2_SMART, [pixels])
    connected = lsfn_connect(label_studio, project, sam2.url, "--interactive")
    assert connected.returncode == 0, connected.stdout + connected.stderr
    backend = ml_backend(label_studio, project)
    (task,) = tasks_by_image(label_studio, project).values()
    reference = Reference(sam2_weights)
    prompts = [
        ([sam2_point(80, 60, (160, 120), label="Dog")], reference(pixels, [(80, 60)], [1], multimask=True), "Dog"),
        ([sam2_box(20, 15, 120, 100, (160, 120))], reference(pixels, box=(20, 15, 120, 100)), "Cat"),
    ]
    for regions, expected, label in prompts:
        body = {"task": task["id"], "context": {"result": regions}}
        response = label_studio.api("POST", f"/api/ml/{backend['id']}/interactive-annotating", body)
        assert response.status == 200, response.data
        answer = response.json()
        assert "errors" not in answer, answer
        (region,) = answer["data"]["result"]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [label]
        mask = sam2_brush_mask(region)
        assert mask.shape == (120, 160)
        assert sam2_iou(mask, expected) >= 0.99
    assert not stored(label_studio, task)
