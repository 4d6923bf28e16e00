"""SAM 3 on one image embedding: a follow-up click and a second concept prompt on a cached image
against the first request on that image; batch pre-annotation of 8 images in one /predict
against 8 single-task calls. Same run, medians, ratios.

    "$(scripts/venv)/bin/python" bench/sam3.py [--tasks 8] [--repeat 3] [--latency MS]

Serves functions/sam3 (`lsfn serve sam3`) with the tests' tiny random SAM 3 (tests/sam3_models.py:
ViT hidden 32, 224 px input): the figures are the function's own costs around a small model
(fetch, decode, cache, text once per request, RLE), not the real model's GPU latency. A local
stand-in for Label Studio serves 640x480 JPEGs, --latency ms late.

  first click     a click on an image the function has not seen (fetch, decode, vision encoder, tracker)
  follow-up       a second click on it (the embedding cached: tracker only)
  first concept   a typed prompt on another new image (fetch, decode, vision encoder, text, detector)
  concept 2       a second typed prompt on it (cached: text encoder and detector only)
  batched     one /predict with --tasks images, no context (label names as concepts)
  sequential  one /predict per task (label-studio-ml-backend predicts one task per request)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from processes import serve_function, stop_group  # bench/
from yolo_batch import HOST, ImageServer, make_jpeg, post_predict  # bench/

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
          '<Label value="cat" predicted_values="cat,kitty"/><Label value="dog"/><Label value="person"/></BrushLabels>'
          '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>'
          '<TextArea name="prompt" toName="image"/></View>')  # fmt: skip


def body(paths: list[str], context: dict | None = None) -> bytes:
    return json.dumps({"tasks": [{"id": i + 1, "data": {"image": p}} for i, p in enumerate(paths)], "label_config": CONFIG,
                       "project": "1.1", "params": {"context": context}}).encode()  # fmt: skip


def click(x: float) -> dict:
    return {"result": [{"original_width": 640, "original_height": 480, "image_rotation": 0, "from_name": "kp", "to_name": "image",
                        "type": "keypointlabels", "is_positive": True,
                        "value": {"x": x, "y": 50.0, "width": 0.5, "keypointlabels": ["cat"]}}]}  # fmt: skip


def typed(text: str) -> dict:
    return {"result": [{"value": {"text": [text]}, "from_name": "prompt", "to_name": "image", "type": "textarea"}]}


def timed(conn: http.client.HTTPConnection, payload: bytes, count: int) -> float:
    started = time.perf_counter()
    post_predict(conn, payload, count)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=20.0, help="image server latency, ms (default 20)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from tests import sam3_models

    with tempfile.TemporaryDirectory(prefix="lsfn-bench-sam3-") as scratch:
        tmp = Path(scratch)
        (tmp / "models").mkdir()
        (tmp / "models" / "sam3").symlink_to(sam3_models.model_dir())
        rng = np.random.default_rng(0)
        count = args.tasks + 2 * args.repeat
        files = {f"/data/upload/1/s-{i}.jpg": make_jpeg(640, 480, rng) for i in range(count)}
        images = ImageServer(files, TOKEN, args.latency / 1000)
        images.start()
        env = {**os.environ, "MODEL_ROOT": str(tmp / "models"), "LABEL_STUDIO_URL": images.url, "LABEL_STUDIO_API_KEY": TOKEN,
               "LOG_LEVEL": "WARNING", "IMAGE_CACHE_BYTES": "0", "MODEL_SCORE_THRESHOLD": "0.2", "SAM3_BATCH_SIZE": "8"}  # fmt: skip
        process, port = serve_function("sam3", ROOT, env, tmp / "function.log", HOST)
        paths = list(files)
        timings: dict[str, list[float]] = {name: [] for name in ("first", "follow-up", "first concept", "concept 2", "batched",
                                                                  "sequential")}  # fmt: skip
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=600)
            for i in range(args.repeat):
                path, other = [paths[args.tasks + 2 * i]], [paths[args.tasks + 2 * i + 1]]
                timings["first"].append(timed(conn, body(path, click(40.0)), 1))
                timings["follow-up"].append(timed(conn, body(path, click(60.0)), 1))
                timings["first concept"].append(timed(conn, body(other, typed("brown dog_dog")), 1))
                timings["concept 2"].append(timed(conn, body(other, typed("kitty_cat")), 1))
                batch = paths[: args.tasks]
                order = (True, False) if i % 2 == 0 else (False, True)
                for batched in order:
                    if batched:
                        timings["batched"].append(timed(conn, body(batch), len(batch)))
                    else:
                        timings["sequential"].append(sum(timed(conn, body([p]), 1) for p in batch))
            conn.close()
        finally:
            stop_group(process)
            images.stop()

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"SAM 3 function over loopback, Python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"  model: tiny random SAM 3 (tests/sam3_models.py); 640x480 JPEGs served {args.latency:.0f} ms late; "
          f"median of {args.repeat}\n")  # fmt: skip
    print(f"{'run':<34}{'seconds':>9}{'ratio':>9}")
    print(f"{'first click on an image':<34}{medians['first']:>9.3f}{1.0:>8.2f}x")
    print(f"{'follow-up click (cached)':<34}{medians['follow-up']:>9.3f}{medians['first'] / medians['follow-up']:>8.2f}x faster")
    print(f"{'first typed concept on an image':<34}{medians['first concept']:>9.3f}{1.0:>8.2f}x")
    print(f"{'second typed concept (cached)':<34}{medians['concept 2']:>9.3f}"
          f"{medians['first concept'] / medians['concept 2']:>8.2f}x faster")  # fmt: skip
    print(f"{f'{args.tasks} tasks, one /predict':<34}{medians['batched']:>9.3f}{1.0:>8.2f}x")
    print(f"{f'{args.tasks} tasks, one /predict each':<34}{medians['sequential']:>9.3f}"
          f"{medians['sequential'] / medians['batched']:>8.2f}x slower")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
