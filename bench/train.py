"""Annotations → new version served: "Start Training" in Label Studio against ultralytics' own
training of the same tasks, in one run.

    "$(scripts/venv)/bin/python" bench/train.py [--tasks N] [--epochs E]

A real Label Studio (the end-to-end tests' cached install), N annotated tasks of 128 px synthetic
shapes, and one `lsfn serve yolo` with a weights store, starting from the tests' tiny detector
that knows circles and squares, not triangles. Timed: from pressing "Start Training" (Label
Studio's API) until the function's /setup answers the new version (the job pulls the tasks and
their images from Label Studio, converts them, scores the served weights, fine-tunes, scores
again, stores and promotes the version; the function picks it up from the store).
Baseline: ultralytics' `YOLO.train` alone, in this process, on the same tasks written as a
dataset by hand, with the same options (no Label Studio, no scoring, no store). Prints both,
the ratio (what the whole job costs over the training itself), and the held-out metric of the
version before and after from the job's report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from processes import serve_function, stop_group  # noqa: E402

from tests import synthetic, yolo_models  # noqa: E402
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer  # noqa: E402
from tests.test_e2e import make_project, ml_backend, tasks_by_image  # noqa: E402
from tests.test_train import CONFIG, annotation  # noqa: E402


def setup_version(url: str, project: int) -> str:
    import urllib3

    answer = urllib3.request("POST", f"{url}/setup", json={"project": f"{project}.1", "schema": CONFIG}, timeout=10)
    return str(answer.json()["model_version"])


def baseline_seconds(drawn: list, root: Path, base: Path, epochs: int) -> float:
    """ultralytics' own training on the same tasks, with the job's split and options."""
    from ultralytics import YOLO

    names = ["circle", "square", "triangle"]
    for index, (pixels, shapes) in enumerate(drawn):
        split = "val" if index % 5 == 0 else "train"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{index}.png").write_bytes(synthetic.png_bytes(pixels))
        lines = [f"{names.index(s.kind)} {(s.bbox()[0] + s.bbox()[2]) / 256} {(s.bbox()[1] + s.bbox()[3]) / 256} "
                 f"{s.size / 128} {s.size / 128}" for s in shapes]  # fmt: skip
        (root / "labels" / split / f"{index}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {json.dumps(names)}\n")
    started = time.perf_counter()
    YOLO(str(base)).train(data=str(root / "data.yaml"), epochs=epochs, imgsz=128, batch=8, nbs=8, optimizer="AdamW", lr0=0.004,
                          warmup_epochs=1, mosaic=0.0, close_mosaic=0, workers=0, plots=False, verbose=False, device="cpu",
                          project=str(root / "runs"), name="run", exist_ok=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    import numpy as np

    os.environ.setdefault("YOLO_OFFLINE", "1")
    rng = np.random.default_rng(2024)
    drawn = [synthetic.make_image(rng, (128, 128), (1, 3)) for _ in range(args.tasks)]
    base = yolo_models.base_detector()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        shutil.copyfile(base, models / "shapes-base.pt")
        ls = LabelStudioServer(tmp / "label-studio")
        function = None
        try:
            ls.wait_ready()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_ROOT", "BASIC_AUTH", "LABEL_STUDIO", "WEIGHTS"))}
            env.update({**yolo_models.offline_env(), "LOG_LEVEL": "WARNING", "MODEL_ROOT": str(models), "LABEL_STUDIO_URL": ls.url,
                        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "WEIGHTS_STORE": (tmp / "store").as_uri(), "WEIGHTS_REFRESH": "0.5",
                        "TRAIN_ARGS": f"epochs={args.epochs},batch=8,lr0=0.004"})  # fmt: skip
            function, port = serve_function("yolo", ROOT, env, tmp / "yolo.log")
            url = f"http://127.0.0.1:{port}"
            project = make_project(ls, CONFIG, [pixels for pixels, _ in drawn])
            for index, task in tasks_by_image(ls, project).items():
                assert ls.api("POST", f"/api/tasks/{task['id']}/annotations", annotation(drawn[index][1], 128, 128)).status == 201
            assert ls.api("POST", "/api/ml", {"url": url, "project": project, "title": "lsfn"}).status == 201
            before = setup_version(url, project)

            started = time.perf_counter()
            assert ls.api("POST", f"/api/ml/{ml_backend(ls, project)['id']}/train", {}).status == 200
            while (version := setup_version(url, project)) == before:
                if time.perf_counter() - started > 1800:
                    print("no new version within 30 minutes; the function's log:\n" + (tmp / "yolo.log").read_text()[-3000:])
                    return 1
                time.sleep(0.25)
            ours = time.perf_counter() - started
            manifest = json.loads((tmp / "store" / "yolo" / str(project) / "versions" / "1" / "manifest.json").read_text())
            baseline = baseline_seconds(drawn, tmp / "baseline", base, args.epochs)

            print(f"{args.tasks} annotated tasks (128 px synthetic shapes), tiny YOLO detector, {args.epochs} epochs, this CPU\n")
            print(f"{'run':<60}{'seconds':>9}{'ratio':>8}")
            print(f"{'ultralytics YOLO.train on the same tasks (baseline)':<60}{baseline:>9.1f}{1.0:>7.2f}x")
            print(f"{'lsfn: Start Training -> new version served':<60}{ours:>9.1f}{ours / baseline:>7.2f}x")
            metrics = manifest["metrics"]
            print(f"\n{version}: held-out {metrics['name']} {metrics['before']:.3f} -> {metrics['after']:.3f} "
                  f"(base {before}), {len(manifest['data'])} tasks")  # fmt: skip
        finally:
            stop_group(function)
            ls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
