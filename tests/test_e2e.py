"""End to end: a real Label Studio server uses the YOLO function as its project's model.

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

from tests import synthetic, yolo_models
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.serving import Function
from tests.test_yolo_http import EXPECTED_LABEL, RECT, box_iou, held_out

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer) -> Iterator[Function]:
    weights = tmp_path_factory.mktemp("e2e-weights")
    shutil.copyfile(yolo_models.detector(), weights / "shapes-det.pt")
    env = {**yolo_models.offline_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}
    fn = Function("yolo", tmp_path_factory.mktemp("e2e-yolo"), env, weights)
    try:
        fn.wait_ready()
        yield fn
    finally:
        fn.close()


def lsfn_connect(label_studio: LabelStudioServer, project: int, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shared.cli", "connect", url, "--project", str(project),
               "--label-studio", label_studio.url, "--token", LEGACY_TOKEN, *extra]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def make_project(label_studio: LabelStudioServer, config: str, images: list[np.ndarray]) -> int:
    response = label_studio.api("POST", "/api/projects", {"title": "e2e", "label_config": config})
    assert response.status == 201, response.data
    project = response.json()["id"]
    # One form field per file: several files under one field name import only the last (PROTOCOL.md §8).
    fields = {f"file{i}": (f"img{i}.png", synthetic.png_bytes(pixels), "image/png") for i, pixels in enumerate(images)}
    response = label_studio.http.request(
        "POST", f"{label_studio.url}/api/projects/{project}/import",
        headers={"Authorization": f"Token {LEGACY_TOKEN}"}, fields=fields,
    )  # fmt: skip
    assert response.status == 201, response.data
    return project


def tasks_by_image(label_studio: LabelStudioServer, project: int) -> dict[int, dict]:
    """The project's tasks by the index of the uploaded image (img<i>.png)."""
    answer = label_studio.api("GET", f"/api/tasks?project={project}&page_size=100").json()
    tasks = answer["tasks"] if isinstance(answer, dict) else answer
    return {int(t["data"]["image"].rsplit("img", 1)[1].split(".")[0]): t for t in tasks}


def test_batch_predictions_are_stored_by_label_studio(label_studio: LabelStudioServer, yolo: Function) -> None:
    data = held_out(6, (160, 120), seed=1001)
    project = make_project(label_studio, RECT, [pixels for pixels, _ in data])
    connected = lsfn_connect(label_studio, project, yolo.url)
    assert connected.returncode == 0, connected.stdout + connected.stderr
    assert "connected" in connected.stdout and "readable with this legacy token" in connected.stdout

    selected = {"selectedItems": {"all": True, "excluded": []}}
    response = label_studio.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", selected)
    assert response.status == 200, response.data

    found = total = 0
    for index, task in tasks_by_image(label_studio, project).items():
        predictions = label_studio.api("GET", f"/api/predictions?task={task['id']}").json()
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
