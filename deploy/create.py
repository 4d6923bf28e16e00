"""`lsfn create NAME [--task ...] [--dir DIR]`: a new function folder that runs as generated.

The folder holds ``main.py`` (a Model subclass importing only ``lsfn``, with a tiny numpy "model"
that finds the brightest region of an image, so it answers something meaningful without any
download), ``weights.json`` (empty: list your weights there), ``requirements.txt`` (its libraries),
``README.md`` (what it does, a label config, which `lsfn try` uses, and how to deploy it), a
``Dockerfile`` (lsfn's image pattern: ``function`` and ``front-door`` targets on lsfn's ``core``
image; `lsfn deploy cloudrun|modal FOLDER` deploys them) and ``test_NAME.py``, which passes as
generated and fails when the model's answer is wrong.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["DOCKERIGNORE", "TASKS", "add_parser", "create", "run"]

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

from pydantic import Field

from lsfn import Batch, FunctionSettings, LabelConfig, Model, Prediction, coords, results


class Options(FunctionSettings):
    """{name}'s own environment variables, read when the function starts (a bad value stops it,
    naming the variable)."""

    # BRIGHT_THRESHOLD=0.9 lsfn serve ...: how close to the brightest pixel "bright" is.
    threshold: float = Field(0.8, gt=0, le=1, validation_alias="BRIGHT_THRESHOLD")


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
    settings_class = Options
    options: Options

    def setup(self) -> None:
        # Your weights: self.settings.model_root / "my-model.pt" (never downloaded at request time).
        # Import heavy libraries (torch, ...) here, not at the top: the front door imports this
        # file without them (it answers /setup and /health while the GPU function sleeps).
        self.threshold = self.options.threshold

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

Its own variables are the `Options` class in `main.py` (`BRIGHT_THRESHOLD`): a bad value stops
the start with one line naming it.

Weights: list the files `setup()` reads in `weights.json` (name, url, sha256); `lsfn weights
weights.json --dest models/` fetches and checks them, and `MODEL_ROOT=models` points the
function at them. Libraries beyond lsfn's go in `requirements.txt`.

## Deploy

Cloud Run (two images from the `Dockerfile`, on lsfn's `core` image; push them to your registry):

```bash
docker build --target core -t lsfn-core <lsfn checkout>
docker build --target function -t REGISTRY/{lname}:v1 . && docker push REGISTRY/{lname}:v1
docker build --target front-door -t REGISTRY/{lname}-front-door:v1 . && docker push REGISTRY/{lname}-front-door:v1
lsfn deploy cloudrun . --project P --region R --image REGISTRY/{lname}:v1 \\
    --front-door-image REGISTRY/{lname}-front-door:v1 --basic-auth-user annotators --secret BASIC_AUTH_PASS=lsfn-pass
```

Modal (builds its image from this folder and the lsfn checkout you run it from):

```bash
lsfn deploy modal . --gpu L4 --secret lsfn            # --torch none: no torch in the image
```

Both deploy `lsfn-{lname}` (a front door Label Studio connects to, and the function behind it,
scaling to zero); `lsfn connect URL --project N` connects it.
'''

DOCKERFILE = '''# {name}'s images, on lsfn's image without a model library (the `core` target of lsfn's
# Dockerfile), with the two targets lsfn's own functions have:
#
#   function     the model: requirements.txt installed, the files weights.json lists baked in
#   front-door   the same routes without the model, forwarding to UPSTREAM_URL (main.py imports
#                its heavy libraries inside setup(), so it loads here without them)
#
#   docker build --target core -t lsfn-core <lsfn checkout>      (once per lsfn version)
#   docker build --target function -t {name} .
#   docker build --target front-door -t {name}-front-door .
#
# The weights are downloaded from weights.json's URLs and checked against its sha256 pins;
# models/ (local weights for `lsfn serve`) stays out of the build (.dockerignore).
ARG LSFN_IMAGE=lsfn-core

FROM ${{LSFN_IMAGE}} AS weights
COPY weights.json /tmp/weights.json
RUN lsfn weights /tmp/weights.json --dest /app/models --manifest /app/models/weights-manifest.json

FROM ${{LSFN_IMAGE}} AS front-door
COPY --from=weights /app/models/weights-manifest.json /app/models/weights-manifest.json
COPY --chown=10001:10001 . /app/function/
ENV LSFN_FUNCTION=/app/function/main.py:{cls}
USER 10001:10001
WORKDIR /app
EXPOSE 8080
CMD ["lsfn", "serve", "--front-door"]

FROM ${{LSFN_IMAGE}} AS function
COPY requirements.txt /tmp/requirements.txt
# pip reaches its index with the builder's network; a configuration of the builder's (a proxy's
# CA, a mirror) comes as build secrets, as for lsfn's images.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \\
    --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \\
    pip install --no-cache-dir -r /tmp/requirements.txt
COPY --from=weights /app/models /app/models
COPY --chown=10001:10001 . /app/function/
ENV LSFN_FUNCTION=/app/function/main.py:{cls}
USER 10001:10001
WORKDIR /app
EXPOSE 8080
CMD ["lsfn", "serve"]
'''

DOCKERIGNORE = """models/
__pycache__/
*.pyc
.pytest_cache/
try/
"""

REQUIREMENTS = """# {name}'s libraries beyond lsfn's own (numpy, Pillow, pydantic come with it), installed into its
# function image (Dockerfile) and its Modal image (lsfn deploy modal, which installs torch itself:
# --torch cu126 by default, --torch none for a function without it). For torch in the Dockerfile's
# image, on Cloud Run's L4 (NVIDIA driver 535: CUDA 12), the build lsfn's images pin:
#   --extra-index-url https://download.pytorch.org/whl/cu126
#   torch==2.14.1+cu126
"""


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
    fields = {"name": name, "lname": name.lower().replace("_", "-"), "task": task, "cls": _class_name(name), "config": spec["config"], "control": spec["control"],
              "predict": spec["predict"], "check": spec["check"], "test": test}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(MAIN.format(**fields))
    (folder / test).write_text(TEST.format(**fields))
    (folder / "README.md").write_text(README.format(**fields))
    (folder / "Dockerfile").write_text(DOCKERFILE.format(**fields))
    (folder / "weights.json").write_text('{"weights": []}\n')
    (folder / "requirements.txt").write_text(REQUIREMENTS.format(**fields))
    (folder / ".dockerignore").write_text(DOCKERIGNORE)
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
    print(f"created {folder}: main.py ({cls}), {test}, README.md, Dockerfile, weights.json, requirements.txt\n"
          f"next: cd {folder} && pytest {test} && lsfn serve main.py:{cls}")  # fmt: skip
    return 0
