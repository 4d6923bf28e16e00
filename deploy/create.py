"""`lsfn create NAME [--task ...] [--dir DIR]`: a new function folder that runs as generated.

The folder holds ``main.py`` (a Model subclass importing only ``lsfn``, with a tiny numpy "model"
that finds the brightest region of an image, so it answers something meaningful without any
download), ``weights.json`` (empty: list your weights there), ``README.md`` (what it does and a
label config, which `lsfn try` uses), a ``Dockerfile`` (lsfn's image pattern, the function on
top) and ``test_NAME.py``, which passes as generated and fails when the model's answer is wrong.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "add_parser", "create", "run"]

# Per task: the label config, the Model's predict loop body, and what the generated test checks.
TASKS: dict[str, dict[str, str]] = {
    "detect": {
        "config": """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="bright"/>
  </RectangleLabels>
</View>""",
        "control": "RectangleLabels",
        "predict": """            box = bright_box(image.pixels, self.threshold)
            if box is None:
                out.append(results.prediction([]))
                continue
            value = coords.rect_to_percent(box, image.width, image.height)
            region = results.rectangle(control.name, control.object.name, label, value, size=size, score=1.0)
            out.append(results.prediction([region], score=1.0))""",
        "check": """    (region,) = item["result"]
    assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == ["bright"]
    value = region["value"]
    # The square is at (30, 20)-(60, 50) of a 100 x 80 image, in percent:
    assert abs(value["x"] - 30) < 1.5 and abs(value["y"] - 25) < 1.5
    assert abs(value["width"] - 30) < 1.5 and abs(value["height"] - 37.5) < 1.5""",
    },
    "segment": {
        "config": """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="label" toName="image">
    <Label value="bright"/>
  </BrushLabels>
</View>""",
        "control": "BrushLabels",
        "predict": """            mask = bright_mask(image.pixels, self.threshold)
            if not mask.any():
                out.append(results.prediction([]))
                continue
            region = results.brush(control.name, control.object.name, label, mask, score=1.0)
            out.append(results.prediction([region], score=1.0))""",
        "check": """    (region,) = item["result"]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    from lsfn.shared.rle import rle_to_mask

    mask = rle_to_mask(region["value"]["rle"], 80, 100) > 0
    assert mask[20:50, 30:60].all() and mask.sum() == 30 * 30  # exactly the bright square""",
    },
    "classify": {
        "config": """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image">
    <Choice value="bright"/>
    <Choice value="dark"/>
  </Choices>
</View>""",
        "control": "Choices",
        "predict": """            gray = image.pixels.astype(np.float32).mean(axis=2)
            choice = "bright" if float(gray.mean()) >= 64 else "dark"
            if choice not in control.label_values:
                choice = control.label_values[0]
            out.append(results.prediction([results.choices(control.name, control.object.name, choice, score=1.0)], score=1.0))""",
        "check": """    (region,) = item["result"]
    assert region["type"] == "choices" and region["value"]["choices"] == ["dark"]  # a dark image, a small square""",
    },
    "keypoints": {
        "config": """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="label" toName="image">
    <Label value="bright"/>
  </KeyPointLabels>
</View>""",
        "control": "KeyPointLabels",
        "predict": """            box = bright_box(image.pixels, self.threshold)
            if box is None:
                out.append(results.prediction([]))
                continue
            x = (box.x + box.width / 2) * 100 / image.width
            y = (box.y + box.height / 2) * 100 / image.height
            region = results.keypoint(control.name, control.object.name, label, x, y, size=size, score=1.0)
            out.append(results.prediction([region], score=1.0))""",
        "check": """    (region,) = item["result"]
    assert region["type"] == "keypointlabels"
    # The centre of the square (45, 35) of a 100 x 80 image, in percent:
    assert abs(region["value"]["x"] - 45) < 1.5 and abs(region["value"]["y"] - 43.75) < 1.5""",
    },
    "text": {
        "config": """<View>
  <Image name="image" value="$image"/>
  <TextArea name="label" toName="image"/>
</View>""",
        "control": "TextArea",
        "predict": """            box = bright_box(image.pixels, self.threshold)
            text = "nothing bright" if box is None else f"a bright region of {int(box.width)} x {int(box.height)} pixels"
            out.append(results.prediction([results.textarea(control.name, control.object.name, text, score=1.0)], score=1.0))""",
        "check": """    (region,) = item["result"]
    assert region["type"] == "textarea" and region["value"]["text"] == ["a bright region of 30 x 30 pixels"]""",
    },
}

MAIN = '''"""{name}: an lsfn function (made by `lsfn create {name} --task {task}`).

The runtime around it fetches and decodes each task's image, checks the label config, answers
Label Studio's routes and turns an exception in one task into that task's error. Replace the
brightness "model" with yours: load it in setup() from MODEL_ROOT (list its files in
weights.json), predict in predict().

    lsfn serve main.py:{cls}                 # on http://127.0.0.1:9090
    lsfn try main.py:{cls} photo.jpg         # what it answers, drawn on the photo
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsfn import Batch, LabelConfig, Model, Prediction, coords, results


def bright_mask(pixels: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels at least ``threshold`` of the brightest one."""
    gray = pixels.astype(np.float32).mean(axis=2)
    return gray >= threshold * max(float(gray.max()), 1.0)


def bright_box(pixels: np.ndarray, threshold: float) -> coords.PixelRect | None:
    """The box around the bright pixels, in pixels."""
    ys, xs = np.nonzero(bright_mask(pixels, threshold))
    if len(xs) == 0:
        return None
    return coords.PixelRect(float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))


class {cls}(Model):
    model_version = "{name}-0.1"

    def setup(self) -> None:
        # Your weights: self.settings.model_root / "my-model.pt" (never downloaded at request time).
        self.threshold = 0.8

    def check_label_config(self, config: LabelConfig) -> None:
        config.require("{control}", "Image")

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        control = batch.label_config.require("{control}", "Image")[0]
        label = control.label_values[0] if control.label_values else "{name}"
        out: list[Prediction] = []
        for task in batch.tasks:
            image = task.image(control.object.name)
            size = (image.width, image.height)
{predict}
        return out
'''

TEST = '''"""{name}'s own test: the function in this process, a /predict as Label Studio sends it, on
an image with one bright square. It fails when the model's answer is wrong.

    pytest {test}
"""

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from lsfn.shared.cli import function_runtime

HERE = Path(__file__).resolve().parent
CONFIG = """{config}"""


def square_image() -> str:
    pixels = np.full((80, 100, 3), 20, dtype=np.uint8)
    pixels[20:50, 30:60] = 250
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_model_finds_the_bright_square() -> None:
    runtime = function_runtime(str(HERE / "main.py") + ":{cls}")
    runtime.start()
    body = {{"tasks": [{{"id": 1, "data": {{"image": square_image()}}}}], "label_config": CONFIG, "project": "1.1",
             "params": {{"login": None, "password": None, "context": None}}}}
    status, data, _ = runtime.call("POST", "/predict", json.dumps(body).encode(), {{"Content-Type": "application/json"}})
    assert status == 200, data
    (item,) = json.loads(data)["results"]
{check}
'''

README = '''# {name}

An lsfn function made by `lsfn create {name} --task {task}`: its "model" finds the brightest
region of an image. Replace it with yours in `main.py`.

Label config:

```xml
{config}
```

```bash
lsfn serve main.py:{cls}                      # http://127.0.0.1:9090, connect it in Label Studio
lsfn try main.py:{cls} photo.jpg --out try/   # what it answers, drawn
pytest {test}                           # its own test
```

Weights: list the files `setup()` reads in `weights.json` (name, url, sha256); `lsfn weights
weights.json --dest models/` fetches and checks them, and `MODEL_ROOT=models` points the
function at them. The `Dockerfile` puts the function on top of lsfn's core image.
'''

DOCKERFILE = '''# {name} on top of lsfn's image without a model library (the `core` target of lsfn's
# Dockerfile: docker build --target core -t lsfn-core <lsfn checkout>). Add your libraries
# (torch, ...) with pip below, and bake the weights weights.json lists.
ARG LSFN_IMAGE=lsfn-core
FROM ${{LSFN_IMAGE}}
COPY --chown=10001:10001 . /app/function
RUN lsfn weights /app/function/weights.json --dest /app/models --manifest /app/models/weights-manifest.json
ENV LSFN_FUNCTION=/app/function/main.py:{cls} \\
    LSFN_HOST=0.0.0.0 \\
    PORT=8080
USER 10001:10001
WORKDIR /app
EXPOSE 8080
CMD ["lsfn", "serve"]
'''


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) + "Model"


def create(name: str, task: str, parent: Path) -> Path:
    """The new function's folder ``parent/name``, written."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"{name!r}: a function's name starts with a letter and holds letters, digits, _ and -")
    if task not in TASKS:
        raise ValueError(f"--task {task!r}: one of {', '.join(TASKS)}")
    folder = parent / name
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not empty")
    spec = TASKS[task]
    test = f"test_{name.replace('-', '_')}.py"  # a basename of its own: pytest collects folders together
    fields = {"name": name, "task": task, "cls": _class_name(name), "config": spec["config"], "control": spec["control"],
              "predict": spec["predict"], "check": spec["check"], "test": test}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(MAIN.format(**fields))
    (folder / test).write_text(TEST.format(**fields))
    (folder / "README.md").write_text(README.format(**fields))
    (folder / "Dockerfile").write_text(DOCKERFILE.format(**fields))
    (folder / "weights.json").write_text('{"weights": []}\n')
    return folder


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser("create", help="create a new function folder from a template that runs as generated")
    cmd.add_argument("name")
    cmd.add_argument("--task", default="detect", choices=sorted(TASKS), help="what the function answers (default detect)")
    cmd.add_argument("--dir", type=Path, default=Path("."), help="the folder to create it in (default: here)")


def run(args: argparse.Namespace) -> int:
    try:
        folder = create(args.name, args.task, args.dir)
    except (ValueError, OSError) as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 2
    cls = _class_name(args.name)
    test = f"test_{args.name.replace('-', '_')}.py"
    print(f"created {folder}: main.py ({cls}), {test}, README.md, Dockerfile, weights.json\n"
          f"next: cd {folder} && pytest {test} && lsfn serve main.py:{cls}")  # fmt: skip
    return 0
