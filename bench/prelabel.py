"""`lsfn prelabel` against Label Studio's own "Retrieve predictions", on the same tasks, in one run.

    "$(scripts/venv)/bin/python" bench/prelabel.py [--tasks N]

A real Label Studio (the end-to-end tests' cached install) and one `lsfn serve yolo` (the shipped
shapes detector, this machine's CPU). The same N synthetic images are uploaded to one project per
run. Baseline: the function connected as the project's ML backend, the Data Manager's "Retrieve
predictions" on all tasks (one synchronous /predict with every task; Label Studio gives up after
100 s and stores nothing). Then `lsfn prelabel` on a fresh project at concurrency 1, 2 and 4
(batches of 8). Prints tasks per second of each, the ratio to the baseline, and the largest
project each finishes inside Label Studio's 100 s; every run's predictions are counted in Label
Studio (a run that stored fewer than N is reported, not timed).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from processes import serve_function, stop_group  # noqa: E402

from lsfn.shared.label_studio import LabelStudio  # noqa: E402
from lsfn.deploy.prelabel import Options, prelabel  # noqa: E402
from lsfn.deploy.prelabel_targets import HttpTarget  # noqa: E402
from tests import synthetic  # noqa: E402
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer  # noqa: E402
from tests.test_e2e import make_project  # noqa: E402

CONFIG = ("<View><Image name='image' value='$image'/><RectangleLabels name='label' toName='image' model_path='shapes.pt'>"
          "<Label value='circle'/><Label value='square'/><Label value='triangle'/></RectangleLabels></View>")  # fmt: skip
LIMIT = 100.0  # seconds Label Studio waits for a /predict
DEADLINE = 90.0  # an lsfn function's PREDICT_DEADLINE: what it finished by then is answered and stored


def stored(ls: LabelStudioServer, project: int) -> int:
    return len(ls.api("GET", f"/api/predictions?project={project}").json())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=48)
    args = parser.parse_args()
    import numpy as np

    rng = np.random.default_rng(5)
    images = [synthetic.make_image(rng, size=(640, 480), shapes=(1, 3))[0] for _ in range(args.tasks)]
    with tempfile.TemporaryDirectory() as tmp:
        ls = LabelStudioServer(Path(tmp) / "label-studio")
        function = None
        try:
            ls.wait_ready()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_ROOT", "BASIC_AUTH", "LABEL_STUDIO"))}
            env.update({"LOG_LEVEL": "WARNING", "YOLO_OFFLINE": "1", "LABEL_STUDIO_URL": ls.url,
                        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN, "MAX_CONCURRENT_PREDICTIONS": "4"})  # fmt: skip
            function, port = serve_function("yolo", ROOT, env, Path(tmp) / "yolo.log")
            url = f"http://127.0.0.1:{port}"
            print(f"{args.tasks} tasks of 640x480 synthetic images, yolo (shipped detector) on this CPU, batches of 8\n")
            print(f"{'run':<36}{'seconds':>9}{'tasks/s':>9}{'ratio':>8}{'largest project in 100 s':>26}")

            # Label Studio's own "Retrieve predictions": one /predict with every task.
            project = make_project(ls, CONFIG, images)
            assert ls.api("POST", "/api/ml", {"url": url, "project": project, "title": "lsfn"}).status == 201
            started = time.perf_counter()
            selected = {"selectedItems": {"all": True, "excluded": []}}
            answer = ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", selected)
            seconds = time.perf_counter() - started
            count = stored(ls, project)
            if answer.status != 200 or count != args.tasks:
                print(f"Label Studio's Retrieve predictions stored {count} of {args.tasks} (answer {answer.status})")
                return 1
            baseline = args.tasks / seconds
            print(f"{'Label Studio: Retrieve predictions':<36}{seconds:>9.2f}{baseline:>9.2f}{1.0:>7.2f}x"
                  f"{int(baseline * DEADLINE):>20} tasks*")  # fmt: skip

            client = LabelStudio(ls.url, LEGACY_TOKEN)
            for concurrency in (1, 2, 4):
                project = make_project(ls, CONFIG, images)
                started = time.perf_counter()
                summary = prelabel(client, HttpTarget(url, concurrency), Options(project=project, batch_size=8), out=io.StringIO())
                seconds = time.perf_counter() - started
                count = stored(ls, project)
                if count != args.tasks or summary.failed:
                    print(f"lsfn prelabel at concurrency {concurrency} stored {count} of {args.tasks}")
                    return 1
                rate = args.tasks / seconds
                print(f"{f'lsfn prelabel, concurrency {concurrency}':<36}{seconds:>9.2f}{rate:>9.2f}{rate / baseline:>7.2f}x"
                      f"{int(rate * LIMIT):>20} tasks")  # fmt: skip
            print("\n* in one synchronous request per selection: an lsfn function answers what it finished within its "
                  f"PREDICT_DEADLINE ({DEADLINE:g} s) and Label Studio stores that, the rest needs another run; a "
                  f"label-studio-ml-backend server still busy at {LIMIT:g} s gets nothing stored. lsfn prelabel has no "
                  "such limit: its figure is what it finishes in the same 100 s.")  # fmt: skip
        finally:
            stop_group(function)
            ls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
