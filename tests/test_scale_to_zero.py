"""End to end: a real Label Studio in front of functions that scale to zero.

The local platform (tests/platform.py) starts `lsfn serve` on the first request after a
provisioning delay and stops it when idle, as Cloud Run and Modal do with a GPU function. Through
the front door Label Studio never notices; connected to the scaled-to-zero function directly it
fails, which is the problem the front door exists for.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import synthetic, yolo_models
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.platform import ScaleToZero
from tests.serving import Function, call
from tests.test_e2e import lsfn_connect, make_project, ml_backend, retrieve_predictions, stored, tasks_by_image, upload_images
from tests.test_yolo_http import RECT, held_out

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent
BRIGHT = ROOT / "tests" / "functions" / "bright" / "main.py"
# The platform's own part of a cold start (finding a GPU, pulling the image: 5-25 s on Cloud Run),
# before the process even starts: already more than Label Studio's health check allows.
START_DELAY = 3.0


@pytest.fixture(scope="module")
def label_studio(label_studio_server: LabelStudioServer) -> LabelStudioServer:
    return label_studio_server


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale-weights")
    shutil.copyfile(yolo_models.detector(), root / "shapes-det.pt")
    return root


def yolo_env(label_studio: LabelStudioServer) -> dict[str, str | None]:
    return {**yolo_models.offline_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}


@pytest.fixture
def gpu(tmp_path: Path, label_studio: LabelStudioServer, weights: Path) -> Iterator[ScaleToZero]:
    """The YOLO function on the scale-to-zero platform, scaled to zero."""
    platform = ScaleToZero("yolo", tmp_path / "gpu", yolo_env(label_studio), weights, idle=5.0, start_delay=START_DELAY)
    yield platform
    platform.close()


def predicted_task_ids(forwarded: bytes) -> list[int]:
    return [task["id"] for task in json.loads(forwarded)["tasks"]]


def test_through_the_front_door_label_studio_never_notices_scale_to_zero(
    label_studio: LabelStudioServer, weights: Path, gpu: ScaleToZero, tmp_path: Path
) -> None:
    door = Function("yolo", tmp_path / "door", yolo_env(label_studio), weights, args=("--upstream", gpu.url))
    try:
        data = held_out(6, (160, 120), seed=1101)
        project = make_project(label_studio, RECT, [pixels for pixels, _ in data[:4]])
        connected = lsfn_connect(label_studio, project, door.url)
        assert connected.returncode == 0, connected.stdout + connected.stderr
        version = ml_backend(label_studio, project)["model_version"]
        assert version.startswith("yolo-shapes-det@")

        # 1. The upstream is cold: "Retrieve predictions" starts it and every task is stored.
        gpu.wait_stopped()
        starts = gpu.starts
        retrieve_predictions(label_studio, project)
        assert gpu.starts == starts + 1
        first = tasks_by_image(label_studio, project)
        for task in first.values():
            (prediction,) = stored(label_studio, task)
            assert prediction["result"] and prediction["model_version"] == version

        # 2. Scaled to zero again: Label Studio still sees the model connected, and the next
        # batch (two new tasks) also stores everything and predicts nothing twice.
        gpu.wait_stopped()
        for _ in range(3):
            assert ml_backend(label_studio, project)["state"] == "CO"  # its health check and /setup passed
        upload_images(label_studio, project, [pixels for pixels, _ in data[4:]], first=4)
        gpu.wait_stopped()
        starts = gpu.starts
        retrieve_predictions(label_studio, project)
        assert gpu.starts == starts + 1
        everything = tasks_by_image(label_studio, project)
        assert len(everything) == 6
        for task in everything.values():
            (prediction,) = stored(label_studio, task)
            assert prediction["result"] and prediction["model_version"] == version
        (last,) = [f for f in gpu.forwarded if f.path == "/predict"][-1:]
        assert sorted(predicted_task_ids(last.body)) == sorted(everything[i]["id"] for i in (4, 5))
    finally:
        door.close()


def test_connected_directly_label_studio_gives_up_on_a_scaled_to_zero_function(
    label_studio: LabelStudioServer, gpu: ScaleToZero
) -> None:
    """The problem itself: a function that scaled to zero is slower to answer than Label
    Studio's one-second health check, so connecting fails, and a connection made while it was
    warm predicts nothing once it is cold."""
    project = make_project(label_studio, RECT, [held_out(1, (160, 120), seed=1102)[0][0]])
    cold = lsfn_connect(label_studio, project, gpu.url)
    assert cold.returncode == 1
    assert "health check failed" in cold.stderr and "timed out" in cold.stderr.lower(), cold.stderr
    # Once it is warm (the failed attempt started it), connecting works...
    deadline = time.monotonic() + 120
    while call("GET", gpu.url + "/health").status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert lsfn_connect(label_studio, project, gpu.url).returncode == 0
    # ...until it scales to zero: then "Retrieve predictions" stores nothing.
    gpu.wait_stopped()
    retrieve_predictions(label_studio, project)
    (task,) = tasks_by_image(label_studio, project).values()
    assert stored(label_studio, task) == []
    assert not [f for f in gpu.forwarded if f.path == "/predict"]


def bright_task(seed: int, hold: float) -> dict[str, object]:
    """A task whose image is a data: URL (the bright test function boxes its bright square) and
    whose prediction takes ``hold`` seconds."""
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    x = 4 + seed % 40
    pixels[10:30, x : x + 16] = 255
    url = "data:image/png;base64," + base64.b64encode(synthetic.png_bytes(pixels)).decode()
    return {"data": {"image": url, "hold": hold, "seed": seed}}


BRIGHT_CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="Bright"/></RectangleLabels></View>"""


def test_a_batch_longer_than_the_deadline_is_stored_over_runs_without_repeats(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """Label Studio gives up on a /predict after 100 s and stores nothing. With a deadline, each
    run stores what was finished and the next run sends only the rest."""
    env: dict[str, str | None] = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}
    gpu = ScaleToZero(BRIGHT, tmp_path / "gpu", env, tmp_path / "weights", idle=60.0, start_delay=1.0)
    door_env = {**env, "PREDICT_DEADLINE": "6", "UPSTREAM_CHUNK_TASKS": "1", "UPSTREAM_CONCURRENCY": "1"}
    door = Function(BRIGHT, tmp_path / "door", door_env, tmp_path / "weights", args=("--upstream", gpu.url))
    try:
        project = make_project(label_studio, BRIGHT_CONFIG, [])
        tasks = [bright_task(seed, hold=0.7) for seed in range(12)]
        assert label_studio.api("POST", f"/api/projects/{project}/import", tasks).status == 201
        assert lsfn_connect(label_studio, project, door.url).returncode == 0
        ids = [t["id"] for t in label_studio.api("GET", f"/api/tasks?project={project}&page_size=100").json()["tasks"]]
        assert len(ids) == 12
        stored_after: list[int] = []
        for _ in range(6):
            done_before = {i for i in ids if label_studio.api("GET", f"/api/predictions?task={i}").json()}
            sent_before = len(gpu.forwarded)
            retrieve_predictions(label_studio, project)
            sent = {i for f in gpu.forwarded[sent_before:] if f.path == "/predict" for i in predicted_task_ids(f.body)}
            assert sent and not sent & done_before  # a run sends only the tasks still without a prediction
            counts = [len(label_studio.api("GET", f"/api/predictions?task={i}").json()) for i in ids]
            stored_after.append(sum(counts))
            if stored_after[-1] == len(ids):
                break
        assert 0 < stored_after[0] < len(ids), stored_after  # the first run ran out of time...
        assert stored_after[-1] == len(ids), stored_after  # ...later runs stored the rest
        assert counts == [1] * len(ids)  # and no task was predicted twice
    finally:
        door.close()
        gpu.close()

