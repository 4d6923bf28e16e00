"""Brush RLE: shared.rle against label-studio-sdk's converter.brush, measured in the same run.

    python bench/rle.py [--repeat N]

Encodes (mask_to_rle vs brush.mask2rle) and decodes (rle_to_mask vs brush.decode_rle) the same
masks, checks the outputs are identical, and prints the median time of each with the ratio
(SDK time / lsfn time; higher is better). Targets: >= 8x encoding a full-HD mask of filled
shapes, >= 20x encoding full-HD noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from label_studio_sdk.converter import brush  # noqa: E402

from lsfn.shared.rle import mask_to_rle, rle_to_mask  # noqa: E402

TARGETS = {("shapes 1920x1080", "encode"): 8.0, ("noise 1920x1080", "encode"): 20.0}


def shapes(height: int, width: int) -> np.ndarray:
    """A few filled shapes, as an instance mask or a segmentation layer looks."""
    yy, xx = np.mgrid[:height, :width]
    h, w = height / 1080, width / 1920  # shapes scale with the image
    mask = np.zeros((height, width), bool)
    mask[int(100 * h) : int(500 * h), int(200 * w) : int(900 * w)] = True
    mask[int(650 * h) : int(1000 * h), int(1100 * w) : int(1800 * w)] = True
    mask |= (yy - 540 * h) ** 2 + (xx - 960 * w) ** 2 < (220 * h) ** 2
    mask |= ((yy - 800 * h) / (150 * h)) ** 2 + ((xx - 400 * w) / (300 * w)) ** 2 < 1
    mask |= (yy > 50 * h) & (xx > 1300 * w) & (yy - 50 * h < (xx - 1300 * w) * 0.8) & (xx < 1850 * w)
    return mask


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).random((height, width)) < 0.5


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm caches and allocators once
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per cell (default 7)")
    args = parser.parse_args()
    slow_repeat = max(3, args.repeat // 2)  # the SDK takes seconds on noise

    cases = [
        ("shapes 512x512", shapes(512, 512)),
        ("shapes 1920x1080", shapes(1080, 1920)),
        ("shapes 3840x2160", shapes(2160, 3840)),
        ("noise 1920x1080", noise(1080, 1920)),
    ]
    rows = []
    failed = False
    for name, mask in cases:
        height, width = mask.shape
        as_uint8 = mask.astype(np.uint8) * 255
        ours = mask_to_rle(mask)
        reference = brush.mask2rle(as_uint8)
        if ours != reference:
            print(f"{name}: encodings differ", file=sys.stderr)
            return 2
        decoded = rle_to_mask(ours, height, width)
        if not np.array_equal(decoded, brush.decode_rle(reference).reshape(height, width, 4)[:, :, 3]):
            print(f"{name}: decodings differ", file=sys.stderr)
            return 2
        repeat = slow_repeat if name.startswith("noise") else args.repeat
        flat = mask.ravel()
        runs = int(np.count_nonzero(flat[1:] != flat[:-1]) + 1)
        for op, sdk_fn, our_fn in (
            ("encode", lambda: brush.mask2rle(as_uint8), lambda: mask_to_rle(mask)),
            ("decode", lambda: brush.decode_rle(reference), lambda: rle_to_mask(ours, height, width)),
        ):
            sdk_ms = median_ms(sdk_fn, repeat)
            our_ms = median_ms(our_fn, repeat)
            ratio = sdk_ms / our_ms
            target = TARGETS.get((name, op))
            verdict = "" if target is None else (f">= {target:g}x ok" if ratio >= target else f"< {target:g}x MISSED")
            failed |= target is not None and ratio < target
            rows.append((name, op, f"{runs:,}", f"{len(ours):,}", f"{sdk_ms:.2f}", f"{our_ms:.2f}", f"{ratio:.1f}x", verdict))

    header = ("mask", "op", "runs~", "rle bytes", "sdk ms", "lsfn ms", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"label-studio-sdk brush vs shared.rle, median of {args.repeat} runs ({slow_repeat} on noise)")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
