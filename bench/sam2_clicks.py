"""SAM 2 clicks: the first click on an image against the clicks that follow it, in the same run.

    "$(scripts/venv)/bin/python" bench/sam2_clicks.py [--size tiny] [--image 1024x768]
        [--images N] [--clicks N] [--latency MS] [--device cpu|cuda|auto] [--checkpoint PATH]

Serves functions/sam2 (`lsfn serve sam2`) with a SAM 2.1 model of the given size; without
--checkpoint its weights are random (built here from the config sam2 ships, saved as Meta's
checkpoints are): the real model's compute cost, no download. A local stand-in for Label
Studio serves the images (JPEG, shapes on noise) under /data/upload/, --latency ms late.

For each of --images images, over HTTP on loopback, one keep-alive connection, as an annotator
clicks: a first click (the function fetches, decodes and encodes the image, then decodes the
mask), then --clicks follow-up clicks at other points of the same image (mask decoder only,
the embedding comes from the function's cache). label-studio-ml-backend's SAM 2 example pays
the first click's cost on every click: it fetches the image and runs the encoder each time.

Printed: median client-side latency of first and follow-up clicks and their ratio (target:
follow-ups at most 0.1 of the first), and the median server time by phase from Server-Timing:
fetch, decode (image bytes), image-encoder, mask-decoder, rle (mask to Label Studio's RLE), encode
(the JSON answer).
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
from pathlib import Path

import numpy as np
from processes import serve_function, stop_group  # bench/
from yolo_batch import HOST, ImageServer, make_jpeg, post_predict, server_timing  # bench/

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="object"/></KeyPointLabels>'
    '<BrushLabels name="mask" toName="image"><Label value="object"/></BrushLabels></View>'
)
PHASES = ("fetch", "decode", "image-encoder", "mask-decoder", "rle", "encode", "total")


def build_checkpoint(size: str, path: Path) -> Path:
    """Random weights for a SAM 2.1 size, saved as ``{"model": state_dict}``."""
    import torch

    sys.path.insert(0, str(ROOT))
    from lsfn.functions.sam2.engine import SIZES
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SIZES[size][0], ckpt_path=None, device="cpu")
    torch.save({"model": model.state_dict()}, path)
    return path


def click_body(path: str, x: float, y: float, size: tuple[int, int]) -> bytes:
    region = {
        "original_width": size[0], "original_height": size[1], "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["object"], "labels": ["object"]},
        "is_positive": True, "id": f"kp{x:.0f}{y:.0f}", "from_name": "kp", "to_name": "image",
        "type": "keypointlabels", "origin": "manual",
    }  # fmt: skip
    body = {"tasks": [{"id": 1, "data": {"image": path}}], "label_config": CONFIG, "project": "1.1",
            "params": {"login": None, "password": None, "context": {"result": [region]}}}  # fmt: skip
    return json.dumps(body).encode()


def click(conn: http.client.HTTPConnection, body: bytes) -> tuple[float, dict[str, float]]:
    """(client seconds, server phases in ms) of one click; fails unless it answers a mask."""
    answer = post_predict(conn, body, 1)
    result = answer.results[0]["result"]
    if len(result) != 1 or result[0].get("type") != "brushlabels":
        raise SystemExit(f"sam2_clicks: no brush mask in the answer: {str(answer.results)[:1000]}")
    return answer.seconds, server_timing(answer.timing)


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    return {p: statistics.median(s.get(p, 0.0) for s in samples) for p in PHASES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "base_plus", "large"))
    parser.add_argument("--checkpoint", type=Path, help="real weights for --size (default: random weights)")
    parser.add_argument("--image", default="1024x768", help="image size WxH (default 1024x768)")
    parser.add_argument("--images", type=int, default=3, help="images clicked on (default 3)")
    parser.add_argument("--clicks", type=int, default=10, help="follow-up clicks per image (default 10)")
    parser.add_argument("--latency", type=float, default=20.0, help="image server latency, ms (default 20)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.image.lower().split("x"))

    import torch

    with tempfile.TemporaryDirectory(prefix="lsfn-bench-sam2-") as scratch:
        tmp = Path(scratch)
        models = tmp / "models"
        models.mkdir()
        checkpoint = args.checkpoint or build_checkpoint(args.size, models / "bench-sam2.pt")
        rng = np.random.default_rng(0)
        files = {f"/data/upload/1/sam-{i}.jpg": make_jpeg(width, height, rng) for i in range(args.images)}
        images = ImageServer(files, TOKEN, args.latency / 1000)
        images.start()
        env = {
            **os.environ, "MODEL_ROOT": str(models), "MODEL_SIZE": args.size, "MODEL_CHECKPOINT": str(checkpoint.resolve()),
            "DEVICE": args.device, "LABEL_STUDIO_URL": images.url, "LABEL_STUDIO_API_KEY": TOKEN, "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        process, port = serve_function("sam2", ROOT, env, tmp / "function.log", HOST)
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=600)
            first: list[tuple[float, dict[str, float]]] = []
            follow: list[tuple[float, dict[str, float]]] = []
            for path in files:
                spots = rng.uniform(10, 90, size=(args.clicks + 1, 2))
                first.append(click(conn, click_body(path, *spots[0], (width, height))))
                follow.extend(click(conn, click_body(path, *xy, (width, height))) for xy in spots[1:])
            served, refused = images.counts()
        finally:
            stop_group(process)
            images.stop()

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""
    first_s = statistics.median(s for s, _ in first)
    follow_s = statistics.median(s for s, _ in follow)
    print(f"SAM 2 clicks over loopback, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"  machine: {os.cpu_count()} CPUs, device {device}{gpu}; client, image server and function share it")
    weights = "given checkpoint" if args.checkpoint else "random weights"
    print(f"  model: SAM 2.1 {args.size} ({weights}); images {width}x{height} JPEG, served {args.latency:.0f} ms late")
    print(f"  {args.images} images: 1 first click + {args.clicks} follow-up clicks each; image server: {served} served,"
          f" {refused} refused")  # fmt: skip
    print()
    header = f"{'click':<11} {'n':>3} {'client ms':>10} " + " ".join(f"{p:>14}" for p in PHASES)
    print(header)
    print("-" * len(header))
    for name, samples, seconds in (("first", first, first_s), ("follow-up", follow, follow_s)):
        phases = median_phases([p for _, p in samples])
        print(f"{name:<11} {len(samples):>3} {seconds * 1000:>10.1f} " + " ".join(f"{phases[p]:>14.1f}" for p in PHASES))
    print()
    print(f"follow-up / first click: {follow_s / first_s:.3f} (target <= 0.1)")
    print("server phases are medians in ms from Server-Timing; label-studio-ml-backend re-encodes on every click,")
    print("so each of its clicks costs about what the first click costs here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
