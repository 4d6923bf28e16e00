"""`lsfn try`: a function run on local images, its answer drawn. The PNGs are decoded and the
drawn pixels checked against the regions in the JSON written beside them: each box's outline
in its label's colour on the box's edges, each brush mask blended into exactly its pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lsfn.shared import coords
from lsfn.shared.drawing import label_colour
from lsfn.shared.rle import rle_to_mask
from tests import sam2_models, synthetic, yolo_models

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "functions" / "yolo" / "models" / "sample.png"
QUICK_START = ("<View><Image name='image' value='$image'/><RectangleLabels name='label' toName='image' model_path='shapes.pt'>"
               "<Label value='circle'/><Label value='square'/><Label value='triangle'/></RectangleLabels></View>")  # fmt: skip


def lsfn_try(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "BASIC_AUTH"))}
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", "try", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**full, **yolo_models.offline_env(), "LOG_LEVEL": "WARNING", **env})  # fmt: skip


def test_boxes_are_drawn_on_their_edges_in_their_labels_colour(tmp_path: Path) -> None:
    config = tmp_path / "config.xml"
    config.write_text(QUICK_START)
    done = lsfn_try("yolo", str(SAMPLE), "--config", str(config), "--out", str(tmp_path / "out"), env={})
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'out' / 'sample.png'}: " in done.stdout
    (item,) = json.loads((tmp_path / "out" / "sample.json").read_text())["results"]
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    drawn = np.asarray(Image.open(tmp_path / "out" / "sample.png").convert("RGB"))
    height, width = original.shape[:2]
    labels = {r["value"]["rectanglelabels"][0] for r in item["result"]}
    assert item["result"] and drawn.shape[0] == height + 14 * len(labels) + 4  # the legend below the image
    for region in item["result"]:
        colour = np.array(label_colour(region["value"]["rectanglelabels"][0]))
        x0, y0, x1, y1 = coords.box_xyxy(coords.rect_from_percent(region["value"], width, height))
        middle = int((x0 + x1) / 2)
        edge = drawn[max(int(y0) - 1, 0) : int(y0) + 2, middle]  # the top edge, where the outline runs
        assert (edge == colour).all(axis=-1).any(), (region["value"], edge)
        inside = drawn[int((y0 + y1) / 2), int(x0) + 4 : int(x1) - 4]
        assert not (inside == colour).all(axis=-1).all()  # an outline, not a filled box
    untouched = drawn[:height][np.all(drawn[:height] == original, axis=-1)]
    assert len(untouched) > 0.5 * height * width  # the rest of the image is the image


def test_a_brush_mask_is_blended_into_exactly_its_pixels(tmp_path: Path) -> None:
    weights = tmp_path / "models"
    sam2_models.write_checkpoint(weights / sam2_models.TINY_CHECKPOINT)
    pixels = synthetic.make_image(np.random.default_rng(11), size=(96, 80), shapes=1)[0]
    image = tmp_path / "shape.png"
    image.write_bytes(synthetic.png_bytes(pixels))
    done = lsfn_try("sam2", str(image), "--click", "48,40", "--out", str(tmp_path / "out"),
                    env={"MODEL_ROOT": str(weights), "MODEL_SIZE": "tiny"})  # fmt: skip
    assert done.returncode == 0, done.stderr  # the README's example config: clicks and a brush
    (item,) = json.loads((tmp_path / "out" / "shape.json").read_text())["results"]
    (region,) = [r for r in item["result"] if r["type"] == "brushlabels"]
    mask = rle_to_mask(region["value"]["rle"], 80, 96) > 127
    assert mask.any()
    drawn = np.asarray(Image.open(tmp_path / "out" / "shape.png").convert("RGB"))[:80].astype(np.float32)
    colour = np.array(label_colour(region["value"]["brushlabels"][0]), dtype=np.float32)
    blended = pixels.astype(np.float32) * 0.55 + colour * 0.45
    inside = np.abs(drawn[mask] - blended[mask]).mean()
    assert inside < 1.5  # the mask's pixels carry its colour
    outside = ~mask
    outside[:14] = False  # the caption is written above the mask
    assert np.mean(np.all(drawn[outside] == pixels[outside], axis=-1)) > 0.9  # and the others do not
