"""Grounding DINO batching: 8 image tasks in one /predict against 8 single-task calls, same run.

    "$(scripts/venv)/bin/python" bench/grounding_batch.py [--tasks 8] [--repeat 3] [--latency MS]

Serves functions/grounding_dino (`lsfn serve grounding_dino`) with the tiny random-weight
Grounding DINO the tests use (tests/dino_models.py: Swin backbone, one-layer BERT), but with the
real model's image resize (shortest edge 800, longest 1333), so pre-processing, padding and
batching cost what they cost for the real model. A local stand-in for Label Studio serves
640x480 JPEGs, --latency ms late. The prompt is the project's labels (batch "Retrieve
predictions").

  batched     one /predict with all tasks (fetched concurrently, --batch-size images per forward pass)
  sequential  one /predict per task on one keep-alive connection (label-studio-ml-backend's
              grounding_dino example predicts one task per request)

Each is timed --repeat times, alternating which goes first; medians are printed, with the
server time split from Server-Timing (fetch, decode, detector, encode).
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
from yolo_batch import HOST, ImageServer, make_jpeg, post_predict, server_timing  # bench/

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="cat" predicted_values="kitten"/>'
    '<Label value="dog"/><Label value="person"/></RectangleLabels></View>'
)
PHASES = ("fetch", "decode", "detector", "encode", "total")


def body(paths: list[str]) -> bytes:
    return json.dumps({"tasks": [{"id": i + 1, "data": {"image": p}} for i, p in enumerate(paths)], "label_config": CONFIG}).encode()


def run(port: int, paths: list[str], batched: bool) -> tuple[float, dict[str, float]]:
    """(seconds, Server-Timing summed over the run's requests)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    started = time.perf_counter()
    phases: dict[str, float] = {}
    for group in [paths] if batched else [[p] for p in paths]:
        for name, ms in server_timing(post_predict(conn, body(group), len(group)).timing).items():
            phases[name] = phases.get(name, 0.0) + ms
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=20.0, help="image server latency, ms (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="GROUNDING_DINO_BATCH_SIZE (default 8)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.dino_models import write_model

    import torch

    with tempfile.TemporaryDirectory(prefix="lsfn-bench-dino-") as scratch:
        tmp = Path(scratch)
        write_model(tmp / "models" / "grounding-dino-tiny", image_size=None)
        rng = np.random.default_rng(0)
        files = {f"/data/upload/1/g-{i}.jpg": make_jpeg(640, 480, rng) for i in range(args.tasks)}
        images = ImageServer(files, TOKEN, args.latency / 1000)
        images.start()
        env = {**os.environ, "MODEL_ROOT": str(tmp / "models"), "LABEL_STUDIO_URL": images.url, "LABEL_STUDIO_API_KEY": TOKEN,
               "LOG_LEVEL": "WARNING", "IMAGE_CACHE_BYTES": "0", "BOX_THRESHOLD": "0.3",
               "GROUNDING_DINO_BATCH_SIZE": str(args.batch_size)}  # fmt: skip
        process, port = serve_function("grounding_dino", ROOT, env, tmp / "function.log", HOST)
        try:
            paths = list(files)
            runs: dict[bool, list[tuple[float, dict[str, float]]]] = {True: [], False: []}
            for i in range(args.repeat):
                for batched in (True, False) if i % 2 == 0 else (False, True):
                    runs[batched].append(run(port, paths, batched))
        finally:
            stop_group(process)
            images.stop()

    print(f"Grounding DINO batch prediction over loopback, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"  machine: {os.cpu_count()} CPUs, CPU only; client, image server and function share it")
    print("  model: tiny random-weight Grounding DINO (tests/dino_models.py), real resize (800/1333); "
          f"{args.tasks} tasks of 640x480 JPEG, served {args.latency:.0f} ms late; prompt: the labels; "
          f"GROUNDING_DINO_BATCH_SIZE={args.batch_size}")  # fmt: skip
    print()
    header = f"{'run':<11} {'seconds':>8} " + " ".join(f"{p:>10}" for p in PHASES)
    print(header)
    print("-" * len(header))
    medians = {}
    for batched, name in ((True, "batched"), (False, "sequential")):
        seconds = statistics.median(s for s, _ in runs[batched])
        phases = {p: statistics.median(ph.get(p, 0.0) for _, ph in runs[batched]) for p in PHASES}
        medians[batched] = seconds
        print(f"{name:<11} {seconds:>8.3f} " + " ".join(f"{phases[p]:>10.1f}" for p in PHASES))
    print()
    print(f"sequential / batched: {medians[False] / medians[True]:.2f}x (server phases: median ms summed over each run's requests)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
