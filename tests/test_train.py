"""Training on annotations, with real training: a tiny YOLO detector that knows circles and
squares (tests.yolo_models.base_detector) fine-tuned on annotated synthetic shapes, triangles
among them.

End to end: ~30 tasks annotated through Label Studio's API, "Start Training" pressed through its
API, the job trains, the new version is listed on /versions, the next "Retrieve predictions"
stores predictions of it, and on held-out images it finds triangles the base cannot name; a
second instance on the same store switches to it; two triggers at once make one job; a job that
fails leaves the served version as it was.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsfn.functions.yolo.training import class_names, write_dataset
from lsfn.shared import coords, results
from lsfn.shared.annotations import read_regions
from lsfn.shared.label_config import parse_label_config
from lsfn.shared.runtime.trained import TrainedServing, parse_pins
from lsfn.shared.trained_versions import TrainedVersions
from lsfn.shared.training_set import Example
from lsfn.shared.weights_store import FileStore, StoreError
from tests import synthetic, yolo_models
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.serving import Function, call, network_attempts, network_guard
from tests.test_e2e import lsfn_connect, make_project, ml_backend, retrieve_predictions, stored, tasks_by_image

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("circle", "square", "triangle")
CONFIG = f"""<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_path="shapes-base.pt">
{"".join(f'<Label value="{label}"/>' for label in LABELS)}
</RectangleLabels></View>"""
# Small and quick on a CPU: the base was trained at 128 px.
TRAIN_ARGS = "epochs=30,batch=8,lr0=0.004"


# -- annotations read back, datasets, versions -----------------------------------------------------


def test_annotations_are_read_back_in_pixels() -> None:
    config = parse_label_config("""<View><Image name="image" value="$image"/>
      <RectangleLabels name="box" toName="image"><Label value="car"/></RectangleLabels>
      <PolygonLabels name="poly" toName="image"><Label value="car"/></PolygonLabels>
      <BrushLabels name="brush" toName="image"><Label value="car"/></BrushLabels>
      <Choices name="kind" toName="image"><Choice value="day"/><Choice value="night"/></Choices></View>""")
    size = (200, 100)
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:30, 20:60] = True
    mask[60:90, 150:190] = True  # a second object painted with the same stroke
    result = [
        results.rectangle("box", "image", "car", coords.rect_to_percent(coords.PixelRect(20, 10, 40, 20, 30.0), *size), size=size),
        results.polygon("poly", "image", "car", coords.polygon_to_percent([(10, 10), (50, 10), (30, 40)], *size), size=size),
        results.brush("brush", "image", "car", mask),
        results.choices("kind", "image", "night"),
        {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5}},
    ]
    box = read_regions(result, config.control("box"), *size)
    (found,) = box.boxes
    assert found.label == "car" and box.skipped == 1  # the region without a label is counted, not guessed
    assert (round(found.rect.x), round(found.rect.y), round(found.rect.width), round(found.rect.rotation)) == (20, 10, 40, 30)
    (outline,) = read_regions(result, config.control("poly"), *size).outlines
    assert np.allclose(outline.points, [(10, 10), (50, 10), (30, 40)])
    parts = read_regions(result, config.control("brush"), *size).outlines
    boxes = sorted((o.points[:, 0].min(), o.points[:, 1].min(), o.points[:, 0].max(), o.points[:, 1].max()) for o in parts)
    assert np.allclose(boxes, [(20.5, 10.5, 59.5, 29.5), (150.5, 60.5, 189.5, 89.5)])
    assert read_regions(result, config.control("kind"), *size).choices == ["night"]


def test_labels_map_to_the_models_classes_and_new_ones_are_added(tmp_path: Path) -> None:
    config = parse_label_config("""<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">
      <Label value="Ring" predicted_values="circle"/><Label value="SQUARE"/><Label value="triangle"/></RectangleLabels></View>""")
    control = config.control("label")
    names, index = class_names(control, ["circle", "square"])
    assert names == ["circle", "square", "triangle"] and index == {"Ring": 0, "SQUARE": 1, "triangle": 2}
    rng = np.random.default_rng(3)
    examples = []
    for i in range(5):
        pixels, shapes = synthetic.make_image(rng, (128, 96), 2)
        label = {"circle": "Ring", "square": "SQUARE", "triangle": "triangle"}
        boxes = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                  "value": {**coords.rect_to_percent(coords.PixelRect(s.bbox()[0], s.bbox()[1], s.size, s.size), 128, 96),
                            "rectanglelabels": [label[s.kind]]}} for s in shapes]  # fmt: skip
        examples.append((shapes, Example(i + 1, i + 1, "", pixels, {"label": read_regions(boxes, control, 128, 96)})))
    dataset = write_dataset("detect", control, [e for _, e in examples], names, index, tmp_path, 0.2, 0)
    assert len(dataset.train) == 4 and len(dataset.val) == 1
    assert 'names:\n  0: "circle"\n  1: "square"\n  2: "triangle"\n' in dataset.data.read_text()
    for shapes, example in examples:
        split = "val" if example in dataset.val else "train"
        lines = (tmp_path / "labels" / split / f"{example.task_id}.txt").read_text().splitlines()
        expected = sorted(f"{names.index(s.kind)} {(s.bbox()[0] + s.bbox()[2]) / 256:.4f} {s.size / 128:.4f}" for s in shapes)
        got = sorted(f"{line.split()[0]} {float(line.split()[1]):.4f} {float(line.split()[3]):.4f}" for line in lines)
        assert got == expected


def test_segment_and_classify_datasets_take_outlines_and_choices(tmp_path: Path) -> None:
    config = parse_label_config("""<View><Image name="image" value="$image"/>
      <BrushLabels name="mask" toName="image"><Label value="circle"/><Label value="square"/></BrushLabels>
      <Choices name="kind" toName="image"><Choice value="one"/><Choice value="many"/></Choices></View>""")
    mask_control, choice_control = config.control("mask"), config.control("kind")
    examples = []
    for i in range(5):
        mask = np.zeros((60, 80), dtype=bool)
        mask[10:30, 20 + i : 50 + i] = True
        result = [results.brush("mask", "image", "square", mask), results.choices("kind", "image", "one" if i % 2 else "many")]
        regions = {c.name: read_regions(result, c, 80, 60) for c in (mask_control, choice_control)}
        examples.append(Example(i + 1, i + 1, "", np.zeros((60, 80, 3), dtype=np.uint8), regions))
    names, index = class_names(mask_control, ["circle", "square"])
    segment = write_dataset("segment", mask_control, examples, names, index, tmp_path / "seg", 0.2, 0)
    for example in segment.train:
        (line,) = (tmp_path / "seg" / "labels" / "train" / f"{example.task_id}.txt").read_text().splitlines()
        values = [float(v) for v in line.split()[1:]]
        xs, ys = values[0::2], values[1::2]
        shift = example.task_id - 1
        assert line.split()[0] == "1" and np.allclose([min(xs), max(xs)], [(20.5 + shift) / 80, (49.5 + shift) / 80], atol=1e-3)
        assert np.allclose([min(ys), max(ys)], [10.5 / 60, 29.5 / 60], atol=1e-3)
    names, index = class_names(choice_control, [])
    listed = sorted(names)
    classify = write_dataset("classify", choice_control, examples, listed, {k: listed.index(names[v]) for k, v in index.items()},
                             tmp_path / "cls", 0.2, 0)  # fmt: skip
    assert classify.data == tmp_path / "cls"
    found = sorted(str(p.relative_to(tmp_path / "cls")) for p in (tmp_path / "cls").rglob("*.png"))
    assert found == sorted(f"{'val' if e in classify.val else 'train'}/{'one' if e.task_id % 2 == 0 else 'many'}/{e.task_id}.png"
                           for e in examples)  # fmt: skip


def test_the_trigger_runs_one_job_per_project_and_counts_annotations() -> None:
    from lsfn.shared.runtime.train_trigger import Job, TrainBusy, TrainTrigger

    started: list[Job] = []
    trigger = TrainTrigger(started.append, every_n_annotations=3)
    assert trigger.annotated(7) is None and trigger.annotated(7) is None
    job, new = trigger.annotated(7)
    assert new and started == [job] and job.project == 7
    assert trigger.start(7) == (job, False) and trigger.annotated(8) is None  # coalesced; another project counts apart
    job.done.set()
    again, new = trigger.start(7)
    assert new and again.id != job.id and len(started) == 2
    assert TrainTrigger(started.append).annotated(7) is None  # TRAIN_EVERY_N_ANNOTATIONS=0: only Start Training
    # One job at a time over all projects: a trigger per project id starts one, not one per id.
    with pytest.raises(TrainBusy, match="project 7 is running"):
        trigger.start(9)
    assert trigger.annotated(9) is None and trigger.annotated(9) is None and trigger.annotated(9) is None


def test_versions_are_numbered_once_served_by_promotion_and_checked_on_fetch(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    versions = TrainedVersions(store, "yolo")
    weights = tmp_path / "label.pt"
    weights.write_bytes(b"weights-1")
    first = versions.record(3, [weights], {"metrics": {"after": 0.5}})
    weights.write_bytes(b"weights-2")
    second = versions.record(3, [weights], {"metrics": {"after": 0.4}})
    assert (first.n, second.n) == (1, 2) and first.name.startswith("yolo-3-1@") and first.name != second.name
    assert versions.served(3) is None
    versions.promote(first)
    assert versions.served(3) == first and [v.name for v in versions.list()] == [first.name, second.name]
    folder = versions.fetch(first, tmp_path / "cache")
    assert (folder / "label.pt").read_bytes() == b"weights-1"
    store.write(f"yolo/3/versions/{second.n}/label.pt", b"tampered")
    with pytest.raises(StoreError, match="does not match its sha256"):
        versions.fetch(second, tmp_path / "cache")


def test_an_instance_switches_within_the_refresh_and_a_pin_overrides(tmp_path: Path) -> None:
    versions = TrainedVersions(FileStore(tmp_path / "store"), "yolo")
    weights = tmp_path / "label.pt"
    weights.write_bytes(b"w")
    serving = TrainedServing(versions, refresh=0.2, cache=tmp_path / "cache", pins={})
    assert serving.current(3) is None
    version = versions.record(3, [weights], {})
    versions.promote(version)
    assert serving.current(3) is None  # until the refresh, the version it met first
    time.sleep(0.3)
    serving.current(3)  # starts the background check
    deadline = time.monotonic() + 5
    while (served := serving.current(3)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served is not None and served.name == version.name and (served.folder / "label.pt").is_file()
    pinned = TrainedServing(versions, refresh=60, cache=tmp_path / "cache", pins=parse_pins(["3:base"], "yolo"))
    assert pinned.current(3) is None
    with pytest.raises(ValueError, match="WEIGHTS_PIN"):
        parse_pins(["sam2-3-1@abcdef12"], "yolo")


# -- end to end ------------------------------------------------------------------------------------


def annotation(shapes: list[synthetic.Shape], width: int, height: int) -> dict[str, Any]:
    return {"result": [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": width,
                        "original_height": height, "image_rotation": 0,
                        "value": {**coords.rect_to_percent(coords.PixelRect(s.bbox()[0], s.bbox()[1], s.size, s.size), width, height),
                                  "rectanglelabels": [s.kind]}} for s in shapes]}  # fmt: skip


def detection_f1(answer: dict[str, Any], shapes: list[list[synthetic.Shape]], size: tuple[int, int]) -> dict[str, float]:
    """Per label, F1 of the predicted boxes against the drawn shapes at IoU >= 0.5."""
    counts = {label: [0, 0, 0] for label in LABELS}  # true positives, predictions, shapes
    for item, drawn in zip(answer["results"], shapes):
        boxes = [(r["value"]["rectanglelabels"][0], coords.rect_from_percent(r["value"], *size)) for r in item["result"]]
        for label, _ in boxes:
            counts[label][1] += 1
        for shape in drawn:
            counts[shape.kind][2] += 1
            x0, y0, x1, y1 = shape.bbox()
            for label, rect in boxes:
                ix = max(0.0, min(x1, rect.x + rect.width) - max(x0, rect.x))
                iy = max(0.0, min(y1, rect.y + rect.height) - max(y0, rect.y))
                union = (x1 - x0) * (y1 - y0) + rect.width * rect.height - ix * iy
                if label == shape.kind and ix * iy / union >= 0.5:
                    counts[label][0] += 1
                    break
    return {label: 2 * tp / (predicted + truth) if predicted + truth else 1.0 for label, (tp, predicted, truth) in counts.items()}


@pytest.fixture
def trained_setup(tmp_path: Path, label_studio_server: LabelStudioServer) -> Iterator[dict[str, Any]]:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(yolo_models.base_detector(), root / "shapes-base.pt")
    # Both instances, and the jobs they start, with every connection but loopback refused and recorded.
    guard = network_guard(tmp_path)
    guard["PYTHONPATH"] = os.pathsep.join([guard["PYTHONPATH"], str(ROOT)])
    env = {**yolo_models.offline_env(), **guard, "WEIGHTS_STORE": (tmp_path / "store").as_uri(), "WEIGHTS_REFRESH": "1",
           "WEIGHTS_CACHE": str(tmp_path / "cache"), "LABEL_STUDIO_URL": label_studio_server.url,
           "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "TRAIN_ARGS": TRAIN_ARGS, "LOG_LEVEL": "INFO"}  # fmt: skip
    first = Function("yolo", tmp_path / "first", env, root)
    second = Function("yolo", tmp_path / "second", {**env, "WEIGHTS_CACHE": str(tmp_path / "cache-2")}, root)
    try:
        first.wait_ready()
        second.wait_ready()
        yield {"root": root, "env": env, "first": first, "second": second, "store": tmp_path / "store", "tmp": tmp_path}
    finally:
        first.close()
        second.close()


@pytest.mark.e2e
def test_start_training_in_label_studio_serves_a_better_version(label_studio_server: LabelStudioServer,
                                                                trained_setup: dict[str, Any]) -> None:  # fmt: skip
    label_studio, first, second = label_studio_server, trained_setup["first"], trained_setup["second"]
    rng = np.random.default_rng(2024)
    drawn = [synthetic.make_image(rng, (128, 128), (1, 3)) for _ in range(30)]
    project = make_project(label_studio, CONFIG, [pixels for pixels, _ in drawn])
    tasks = tasks_by_image(label_studio, project)
    for index, (_, shapes) in enumerate(drawn):
        created = label_studio.api("POST", f"/api/tasks/{tasks[index]['id']}/annotations", annotation(shapes, 128, 128))
        assert created.status == 201, created.data
    connected = lsfn_connect(label_studio, project, first.url)
    assert connected.returncode == 0, connected.stdout + connected.stderr
    base_version = call("POST", f"{first.url}/setup", {"project": f"{project}.1", "schema": CONFIG}).json()["model_version"]
    assert call("POST", f"{second.url}/setup", {"project": f"{project}.1", "schema": CONFIG}).json()["model_version"] == base_version

    # "Start Training", as the button sends it; then a second press while the job runs.
    backend = ml_backend(label_studio, project)
    pressed = label_studio.api("POST", f"/api/ml/{backend['id']}/train", {})
    assert pressed.status == 200, pressed.data
    again = call("POST", f"{first.url}/webhook", {"action": "START_TRAINING", "project": {"id": project}}).json()
    assert again["status"] == "running" and again["job"]  # coalesced into the running job

    deadline = time.monotonic() + 600
    trained = None
    while time.monotonic() < deadline and trained is None:
        listed = call("GET", f"{first.url}/versions").json()["versions"]
        trained = next((v for v in listed if v.startswith(f"yolo-{project}-1@")), None)
        time.sleep(2)
    assert trained, first.log_path.read_text()[-4000:]
    manifest = json.loads((trained_setup["store"] / "yolo" / str(project) / "versions" / "1" / "manifest.json").read_text())
    assert len(manifest["data"]) == 30 and {"task", "annotation", "updated_at"} <= set(manifest["data"][0])
    assert manifest["metrics"]["after"] > manifest["metrics"]["before"]
    assert json.loads((trained_setup["store"] / "yolo" / str(project) / "served.json").read_text())["version"] == trained

    # Both instances answer the new version within the refresh (the store is the truth).
    for instance in (first, second):
        deadline = time.monotonic() + 30
        while call("POST", f"{instance.url}/setup", {"project": f"{project}.1", "schema": CONFIG}).json()["model_version"] != trained:
            assert time.monotonic() < deadline, f"{instance.url} did not switch to {trained}"
            time.sleep(0.5)

    # The next "Retrieve predictions" stores predictions of the new version.
    retrieve_predictions(label_studio, project)
    for task in list(tasks_by_image(label_studio, project).values())[:5]:
        assert trained in {p["model_version"] for p in stored(label_studio, task)}
    assert trained in label_studio.api("GET", f"/api/projects/{project}/model-versions").json()

    # Held-out images: the trained version finds triangles, which the base cannot name.
    held_out = [synthetic.make_image(rng, (128, 128), (1, 3)) for _ in range(20)]
    body = {"tasks": [{"id": 900 + i, "data": {"image": "data:image/png;base64," + base64.b64encode(
        synthetic.png_bytes(pixels)).decode()}} for i, (pixels, _) in enumerate(held_out)], "label_config": CONFIG}  # fmt: skip
    shapes = [s for _, s in held_out]
    new = detection_f1(call("POST", f"{first.url}/predict", {**body, "project": f"{project}.1"}).json(), shapes, (128, 128))
    base = detection_f1(call("POST", f"{first.url}/predict", {**body, "project": "99999.1"}).json(), shapes, (128, 128))
    print(f"held-out F1 per label: base {base}, trained {new}")
    assert base["triangle"] == 0.0 and new["triangle"] >= 0.5
    assert np.mean(list(new.values())) > np.mean(list(base.values())) + 0.2

    # A job that fails (weights that do not exist) records nothing and leaves the served version.
    failed = subprocess.run(
        [sys.executable, "-m", "lsfn.shared.cli", "train", "yolo", "--project", str(project), "--base", "missing.pt"],
        env={**os.environ, **trained_setup["env"], "MODEL_ROOT": str(trained_setup["root"])},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode == 1 and "missing.pt" in failed.stderr, failed.stderr[-2000:]
    versions = sorted(p.name for p in (trained_setup["store"] / "yolo" / str(project) / "versions").iterdir())
    assert versions == ["1"]
    assert json.loads((trained_setup["store"] / "yolo" / str(project) / "served.json").read_text())["version"] == trained

    # A run that scores worse on the held-out tasks (a learning rate that wrecks the weights) is
    # recorded, not served.
    worse = subprocess.run(
        [sys.executable, "-m", "lsfn.shared.cli", "train", "yolo", "--project", str(project), "--train-arg", "lr0=1.0",
         "--train-arg", "epochs=3", "--train-arg", "warmup_epochs=0"],
        env={**os.environ, **trained_setup["env"], "MODEL_ROOT": str(trained_setup["root"])},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert worse.returncode == 0, worse.stderr[-2000:]
    report = json.loads(worse.stdout)
    assert report["version"].startswith(f"yolo-{project}-2@") and not report["promoted"]
    assert report["after"] < report["before"] and "kept, not served" in report["reason"]
    assert json.loads((trained_setup["store"] / "yolo" / str(project) / "served.json").read_text())["version"] == trained

    # Serving, the jobs Start Training ran and the ones run by hand reached nothing but loopback.
    assert network_attempts(trained_setup["tmp"]) == ""


# -- on Modal: the front door spawns the train function ---------------------------------------------


@pytest.mark.e2e
def test_the_modal_front_door_starts_the_train_function(label_studio_server: LabelStudioServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The Modal app with --train, run here as tests/modal_local runs it: the GPU class through
    .local(), and the train function through .local() in a thread of its own (on Modal: a
    container with its own GPU). Label Studio's project is annotated; /webhook START_TRAINING on
    the front door starts one job, which records a version in the store the front door reads."""
    import threading

    from lsfn.deploy.modal_cli import load_app
    from lsfn.deploy.modal_spec import ModalSpec
    from lsfn.shared.settings import get_settings

    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(yolo_models.base_detector(), root / "shapes-base.pt")
    store = tmp_path / "store"
    for key, value in {**yolo_models.offline_env(), "MODEL_ROOT": str(root), "WEIGHTS_STORE": store.as_uri(),
                       "WEIGHTS_CACHE": str(tmp_path / "cache"), "LABEL_STUDIO_URL": label_studio_server.url,
                       "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "TRAIN_ARGS": "epochs=3,batch=8", "LOG_LEVEL": "WARNING"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    rng = np.random.default_rng(77)
    drawn = [synthetic.make_image(rng, (128, 128), (1, 3)) for _ in range(12)]
    project = make_project(label_studio_server, CONFIG, [pixels for pixels, _ in drawn])
    for index, task in tasks_by_image(label_studio_server, project).items():
        assert label_studio_server.api("POST", f"/api/tasks/{task['id']}/annotations", annotation(drawn[index][1], 128, 128)).status == 201

    module = load_app(ModalSpec(function="yolo", train=True))
    gpu = module.Function()
    spawned: list[tuple[int, str]] = []

    def start_training(project_id: int, job: str) -> Any:
        spawned.append((project_id, job))
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: outcome.update(module.train.local(project_id, job)))
        worker.start()

        def wait() -> dict[str, Any]:
            worker.join()
            if not outcome:
                raise RuntimeError("the train function failed")
            return outcome

        return wait

    door = module.front_door_app("yolo", lambda m, p, b, h, t: gpu.handle.local(m, p, b, h), start_training).test_client()
    first = door.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}).json
    second = door.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}).json
    assert first["status"] == "training" and second == {"status": "running", "job": first["job"]}
    assert spawned == [(project, first["job"])]
    trigger = door.application.extensions["lsfn"].trainer
    assert trigger.job(project).done.wait(300) and trigger.job(project).returncode == 0
    (version,) = TrainedVersions(FileStore(store), "yolo").list(project)
    assert version.name in door.get("/versions").json["versions"] and len(version.manifest["data"]) == 12
    get_settings.cache_clear()
