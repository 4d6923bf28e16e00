"""Small real YOLO models for tests, made offline and cached on disk.

``detector()``, ``segmenter()`` and ``classifier()`` train tiny models on synthetic shapes
(``tests.synthetic``); ``random_model(task)`` builds an untrained one from ultralytics' own
architecture. Each returns the path of a ``.pt`` file that ``ultralytics.YOLO`` loads.

Models are cached in ``yolo_models_dir()``, keyed by everything that decides their weights, so
a machine trains once and reuses them afterwards. Training and evaluation run in a child
Python with the network blocked (``run_offline``): ultralytics never downloads anything, and
the test process keeps its own global state (torch determinism, threads, ultralytics settings).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from tests import synthetic
from tests.model_cache import locked, prune

__all__ = [
    "CLASSES",
    "NETWORK_ATTEMPT",
    "PARAMS",
    "base_detector",
    "classifier",
    "detector",
    "evaluate",
    "offline_env",
    "random_model",
    "report",
    "run_offline",
    "segmenter",
    "yolo_models_dir",
]

CLASSES: tuple[str, ...] = synthetic.KINDS  # ("circle", "square", "triangle"), in class-id order
ROOT = Path(__file__).resolve().parent.parent

Task = Literal["detect", "segment", "classify"]
RandomTask = Literal["pose", "obb", "detect"]

# Everything that decides the weights besides code: part of the cache key.
# Image sizes are (w, h); "arch" is an ultralytics model yaml, scaled by depth/width.
PARAMS: dict[str, dict[str, Any]] = {
    "detect": {
        "arch": "11/yolo11.yaml", "depth": 0.33, "width": 0.125,
        "sizes": [[128, 128], [160, 160], [160, 120], [120, 160]], "shapes": [1, 3],
        "train_images": 300, "val_images": 20,
        # Passed to YOLO.train. nbs = batch: a step per batch (no accumulation), which with
        # a short warm-up is what lets a few epochs converge.
        "train": {"epochs": 10, "imgsz": 128, "batch": 16, "nbs": 16, "optimizer": "AdamW",
                  "lr0": 0.004, "warmup_epochs": 1, "mosaic": 0.0, "close_mosaic": 0},
    },
    "classify": {
        "arch": "11/yolo11-cls.yaml", "depth": 0.33, "width": 0.125,
        "sizes": [[64, 64]], "train_images": 450, "val_images": 30,
        # Crops keep >= 90% of the image (a cut shape changes class); no colour jitter (colour
        # never tells the class, and a darkened shape fades into the background).
        "train": {"epochs": 15, "imgsz": 64, "batch": 32, "nbs": 32, "optimizer": "AdamW",
                  "lr0": 0.002, "warmup_epochs": 1, "scale": 0.1, "hsv_h": 0.0, "hsv_s": 0.0,
                  "hsv_v": 0.0, "erasing": 0.0, "auto_augment": None},
    },
    # Untrained models keep ultralytics' "n" scale; predicting at 160 px keeps tests quick.
    "random": {"depth": 0.50, "width": 0.25, "imgsz": 160},
}
# The segmenter trains like the detector, on polygon labels.
PARAMS["segment"] = {**PARAMS["detect"], "arch": "11/yolo11-seg.yaml"}
# A detector that has never seen a triangle: what the training tests fine-tune.
PARAMS["detect-base"] = {**PARAMS["detect"], "task": "detect", "classes": ["circle", "square"]}
SEED = 0

# Held-out images: never seen in training (another seed), in sizes around the training ones.
HELD_OUT: dict[str, Any] = {
    "sizes": [[128, 128], [160, 160], [160, 120]],
    "classify_sizes": [[64, 64], [96, 96], [128, 128]],
    "images": 90,
    "seed": 7,
}

_RANDOM_ARCH = {
    "detect": "11/yolo11.yaml", "obb": "11/yolo11-obb.yaml", "pose": "11/yolo11-pose.yaml",
}

# What the child Python writes to stderr when something tries to reach the network.
NETWORK_ATTEMPT = "lsfn-network-attempt"

# Runs first in every child: refuses, and reports, every IP connection and name lookup.
_GUARD = f"""
import socket as _socket, sys as _sys

def _refuse(what):
    _sys.stderr.write("{NETWORK_ATTEMPT}: " + repr(what) + "\\n")
    _sys.stderr.flush()
    raise OSError(101, "network access is blocked in this process")

def _lookup(host, *args, **kwargs):
    _refuse(("getaddrinfo", host))

def _connect(self, address):
    if self.family in (_socket.AF_INET, _socket.AF_INET6):
        _refuse(("connect", address))
    return _plain_connect(self, address)

def _connect_ex(self, address):
    if self.family in (_socket.AF_INET, _socket.AF_INET6):
        _refuse(("connect", address))
    return _plain_connect_ex(self, address)

_plain_connect, _plain_connect_ex = _socket.socket.connect, _socket.socket.connect_ex
_socket.getaddrinfo = _lookup
_socket.socket.connect, _socket.socket.connect_ex = _connect, _connect_ex
"""


# ---------------------------------------------------------------------------------------------
# Cache


@functools.cache
def yolo_models_dir() -> Path:
    """``~/.cache/lsfn/yolo-models-<key>`` (``$XDG_CACHE_HOME`` respected): the key hashes the
    parameters, the sources of this file and of the image generator, and the ultralytics
    version, so any change that could alter a model trains afresh."""
    digest = hashlib.sha256()
    digest.update(json.dumps([PARAMS, HELD_OUT, SEED], sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(Path(synthetic.__file__).read_bytes())
    digest.update(metadata.version("ultralytics").encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsfn"
    return cache / f"yolo-models-{digest.hexdigest()[:16]}"


def detector() -> Path:
    """A tiny detector of ``CLASSES`` trained on synthetic shapes."""
    return _cached("detect")


def base_detector() -> Path:
    """A tiny detector of circles and squares only (no triangle class), trained like ``detector()``."""
    return _cached("detect-base")


def segmenter() -> Path:
    """A tiny instance segmenter of ``CLASSES`` trained on synthetic shapes (polygon labels)."""
    return _cached("segment")


def classifier() -> Path:
    """A tiny image classifier of ``CLASSES`` trained on single-shape images."""
    return _cached("classify")


def random_model(task: RandomTask) -> Path:
    """An untrained model of ultralytics' ``yolo11n`` architecture for ``task``, seeded random
    weights. Names: pose ``{0: "person"}`` with the 17-keypoint COCO layout; detect and obb
    ``CLASSES``. Its predictions are arbitrary: for plumbing tests only."""
    if task not in _RANDOM_ARCH:
        raise ValueError(f"no random model for task {task!r}")
    return _cached(f"random-{task}")


def report(name: str) -> dict[str, Any]:
    """What building ``name`` ("detect", "segment", "classify", "random-pose", ...) measured:
    seconds spent, and for trained models their scores on held-out images."""
    _cached(name)
    return json.loads((yolo_models_dir() / f"{name}.json").read_text())


def _cached(name: str) -> Path:
    folder = yolo_models_dir()
    model = folder / f"{name}.pt"
    if model.exists():
        (folder / ".last-used").touch()
        return model
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".last-used").touch()
    prune(folder, "yolo-models-*")
    # One builder per model at a time; another process waits, then finds the file.
    with locked(folder / f".{name}.lock"):
        if model.exists():
            return model
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-") as scratch:
            code = f"from tests.yolo_models import _build; _build({name!r}, {scratch!r})"
            done = run_offline(code, timeout=1800)
            if done.returncode != 0 or NETWORK_ATTEMPT in done.stderr:
                raise RuntimeError(f"building the {name} model failed:\n{_tail(done)}")
            # The report first: a present model always has one. Renames are atomic.
            os.replace(Path(scratch) / f"{name}.json", folder / f"{name}.json")
            os.replace(Path(scratch) / f"{name}.pt", model)
    return model


# ---------------------------------------------------------------------------------------------
# Offline child processes


def offline_env() -> dict[str, str]:
    """Environment variables that keep ultralytics offline, to set before it is imported:
    ``YOLO_OFFLINE=1`` (no online probe at import) and a ``YOLO_CONFIG_DIR`` holding its
    settings and the font it would otherwise download."""
    config = yolo_models_dir() / "config"
    font = config / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        # Dataset checks look for Arial.ttf and download it when missing; any TrueType font
        # under that name satisfies them (plots, the only user, are off anyway).
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        partial = font.with_name(f".Arial.ttf.{os.getpid()}")
        shutil.copyfile(bundled, partial)
        os.replace(partial, font)
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config)}


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return f"{done.stdout[-5000:]}\n{done.stderr[-5000:]}"


@functools.cache
def _netns() -> list[str]:
    # A private network namespace where the kernel allows one: even child programs (pip, curl)
    # cannot reach anything. The in-process guard still reports Python's own attempts.
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


def run_offline(code: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a fresh interpreter (this one's executable, the repository on the
    path) with ultralytics' offline environment and IP networking blocked. An attempt to reach
    the network fails there and leaves ``NETWORK_ATTEMPT`` in the captured stderr."""
    env = {**os.environ, **offline_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*_netns(), sys.executable, "-c", _GUARD + "\n" + code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def evaluate(task: Task, model: Path, images: int | None = None) -> dict[str, Any]:
    """Scores of ``model`` on held-out synthetic images, measured in an offline child: detect
    ``recall`` and ``precision`` (IoU >= 0.5, right class, conf >= 0.25); segment the same plus
    ``mask_iou`` (mean over true shapes of the best same-class mask); classify ``accuracy``."""
    count = HELD_OUT["images"] if images is None else images
    code = (
        "import json; from tests.yolo_models import _evaluate; "
        f"print(json.dumps(_evaluate({task!r}, {str(model)!r}, {count})))"
    )
    done = run_offline(code)
    if done.returncode != 0 or NETWORK_ATTEMPT in done.stderr:
        raise RuntimeError(f"evaluating {model} failed:\n{_tail(done)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Everything below runs in the offline child, where ultralytics may be imported.


def _rng(*labels: int | str) -> np.random.Generator:
    # Independent streams per use (train/val/held-out, per task), stable across runs.
    entropy = [int.from_bytes(hashlib.sha256(str(x).encode()).digest()[:4], "big") for x in labels]
    return np.random.default_rng(entropy)


def _build(name: str, out: str) -> None:
    out_dir = Path(out)
    model = out_dir / f"{name}.pt"
    started = time.perf_counter()
    if name.startswith("random-"):
        _build_random(cast(RandomTask, name.removeprefix("random-")), model)
        result: dict[str, Any] = {"build_seconds": round(time.perf_counter() - started, 1)}
    else:
        _train(name, out_dir, model)
        result = {"train_seconds": round(time.perf_counter() - started, 1)}
        if "classes" not in PARAMS[name]:  # held-out scores are of all of CLASSES
            measured = time.perf_counter()
            result["held_out"] = _evaluate(cast(Task, name), str(model), HELD_OUT["images"])
            result["evaluate_seconds"] = round(time.perf_counter() - measured, 1)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))


def _model_yaml(arch: str, depth: float, width: float, nc: int, path: Path) -> Path:
    """Ultralytics' architecture ``arch`` at an explicit depth/width instead of a named scale."""
    import ultralytics
    from ultralytics.utils import YAML

    spec = YAML.load(Path(ultralytics.__file__).parent / "cfg" / "models" / arch)
    spec.pop("scales", None)
    spec.update(nc=nc, depth_multiple=depth, width_multiple=width)
    YAML.save(path, spec)
    return path


def _write_detection_set(task: Task, params: dict[str, Any], root: Path) -> Path:
    classes = tuple(params.get("classes", CLASSES))
    for split, count in (("train", params["train_images"]), ("val", params["val_images"])):
        rng = _rng(task, split, SEED)
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            w, h = params["sizes"][i % len(params["sizes"])]
            pixels, shapes = synthetic.make_image(rng, (w, h), tuple(params["shapes"]), kinds=classes)
            (root / "images" / split / f"{i:05d}.png").write_bytes(synthetic.png_bytes(pixels))
            lines = []
            for shape in shapes:
                cls = classes.index(shape.kind)
                if task == "segment":
                    points = [f"{x / w:.6f} {y / h:.6f}" for x, y in shape.polygon()]
                    lines.append(f"{cls} " + " ".join(points))
                else:
                    x0, y0, x1, y1 = shape.bbox()
                    lines.append(
                        f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                        f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                    )
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(json.dumps({
        "path": str(root), "train": "images/train", "val": "images/val",
        "names": list(classes),
    }))
    return data


def _write_classification_set(params: dict[str, Any], root: Path) -> Path:
    for split, count in (("train", params["train_images"]), ("val", params["val_images"])):
        rng = _rng("classify", split, SEED)
        for kind in CLASSES:
            (root / split / kind).mkdir(parents=True)
        for i in range(count):
            w, h = params["sizes"][i % len(params["sizes"])]
            # Classes in turn: balanced sets.
            kind = CLASSES[i % len(CLASSES)]
            pixels, _ = synthetic.make_image(rng, (w, h), 1, kinds=(kind,))
            (root / split / kind / f"{i:05d}.png").write_bytes(synthetic.png_bytes(pixels))
    return root


def _train(name: str, scratch: Path, out: Path) -> None:
    from ultralytics import YOLO

    params = PARAMS[name]
    task = cast(Task, params.get("task", name))
    if task == "classify":
        data = _write_classification_set(params, scratch / "data")
    else:
        data = _write_detection_set(task, params, scratch / "data")
    arch = _model_yaml(params["arch"], params["depth"], params["width"], len(params.get("classes", CLASSES)),
                       scratch / f"tiny-{task}.yaml")
    model = YOLO(str(arch), task=task)
    model.train(
        data=str(data), seed=SEED, deterministic=True, device="cpu", workers=0, amp=False,
        plots=False, verbose=False, project=str(scratch / "runs"), name="train",
        exist_ok=True, flipud=0.0,  # an upside-down triangle is not one of the classes
        **{"val": False, **params["train"]},
    )
    # The trainer leaves last.pt with its optimizer stripped and EMA weights in half precision.
    shutil.copyfile(scratch / "runs" / "train" / "weights" / "last.pt", out)


def _build_random(task: RandomTask, out: Path) -> None:
    import torch
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import YAML

    params = PARAMS["random"]
    torch.manual_seed(SEED)
    nc = 1 if task == "pose" else len(CLASSES)
    names = {0: "person"} if task == "pose" else dict(enumerate(CLASSES))
    with tempfile.TemporaryDirectory() as scratch:
        arch = _model_yaml(_RANDOM_ARCH[task], params["depth"], params["width"], nc,
                           Path(scratch) / f"random-{task}.yaml")
        model = YOLO(str(arch), task=task)
    model.model.names = names
    # Initial class biases make every score ~0: lift those of the coarsest scale so that any
    # image yields a few (arbitrary) objects at the default confidence.
    head = model.model.model[-1]
    with torch.no_grad():
        head.cv3[-1][-1].bias.fill_(0.0)
    if task == "pose":
        # Keypoint names as a trained COCO-pose model carries them (from ultralytics' own file).
        coco = YAML.load(Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco-pose.yaml")
        model.model.kpt_names = coco["kpt_names"]
    # Saved arguments become the loaded model's defaults (task, inference size).
    model.ckpt = {"train_args": {"task": task, "imgsz": params["imgsz"]}}
    model.save(out)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _polygon_mask(points: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    mask = np.zeros((h, w), np.uint8)
    if len(points) >= 3:
        # Sub-pixel vertices; a pixel's centre is at +0.5 in polygon coordinates.
        shift = 4
        scaled = np.rint((np.asarray(points, np.float64) - 0.5) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(mask, [scaled], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def _evaluate(task: Task, model_path: str, count: int) -> dict[str, Any]:
    from ultralytics import YOLO

    model = YOLO(model_path)
    rng = _rng("held-out", task, HELD_OUT["seed"])
    if task == "classify":
        right = 0
        for i in range(count):
            w, h = HELD_OUT["classify_sizes"][i % len(HELD_OUT["classify_sizes"])]
            kind = CLASSES[i % len(CLASSES)]
            pixels, _ = synthetic.make_image(rng, (w, h), 1, kinds=(kind,))
            result = model.predict(pixels[..., ::-1], verbose=False)[0]  # ultralytics takes BGR
            right += model.names[int(result.probs.top1)] == kind
        return {"images": count, "accuracy": right / count}

    found = total = true_predictions = predictions = 0
    ious: list[float] = []
    for i in range(count):
        w, h = HELD_OUT["sizes"][i % len(HELD_OUT["sizes"])]
        pixels, shapes = synthetic.make_image(rng, (w, h), (1, 3))
        result = model.predict(pixels[..., ::-1], conf=0.25, verbose=False)[0]
        boxes = result.boxes.xyxy.tolist()
        labels = [model.names[int(c)] for c in result.boxes.cls.tolist()]
        polygons = result.masks.xy if task == "segment" and result.masks is not None else []
        masks = [_polygon_mask(p, h, w) for p in polygons]
        used: set[int] = set()
        for shape in shapes:
            total += 1
            candidates = [
                (_iou(shape.bbox(), tuple(box)), j) for j, box in enumerate(boxes)
                if labels[j] == shape.kind and j not in used
            ]
            best, j = max(candidates, default=(0.0, -1))
            if best >= 0.5:
                found += 1
                used.add(j)
            if task == "segment":
                truth = shape.mask(h, w)
                overlaps = [
                    float((truth & m).sum() / max((truth | m).sum(), 1))
                    for m, label in zip(masks, labels) if label == shape.kind
                ]
                ious.append(max(overlaps, default=0.0))
        predictions += len(boxes)
        true_predictions += len(used)
    scores: dict[str, Any] = {
        "images": count, "shapes": total, "recall": found / total,
        "precision": true_predictions / max(predictions, 1),
    }
    if task == "segment":
        scores["mask_iou"] = float(np.mean(ious))
        scores["mask_iou_min"] = float(np.min(ious))
    return scores
