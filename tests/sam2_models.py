"""SAM 2 for tests: a tiny model with random weights, saved as Meta's checkpoints are, and the
masks sam2's own ``SAM2ImagePredictor`` makes with it (the reference our function must match).

Random weights make arbitrary but deterministic masks that depend on the image and the
prompts: enough to prove that each request got the mask of its own image and prompts, and that
nothing was lost between the model and Label Studio's RLE.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["TINY_CONFIG", "TINY_CHECKPOINT", "Reference", "write_checkpoint"]

TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_CHECKPOINT = "sam2.1_hiera_tiny.pt"  # the file name MODEL_SIZE=tiny looks for


def _build(checkpoint: Path | None = None) -> object:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sam2's optional CUDA extension is absent
        from sam2.build_sam import build_sam2
    # This seed's masks cover a tenth of an image or so, and move with the prompts and the image.
    torch.manual_seed(2)
    return build_sam2(TINY_CONFIG, ckpt_path=str(checkpoint) if checkpoint else None, device="cpu")


def write_checkpoint(path: Path) -> Path:
    """A random-weight tiny SAM 2.1 (seeded) saved as ``{"model": state_dict}``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _build().state_dict()}, path)
    return path


class Reference:
    """Masks from sam2's ``SAM2ImagePredictor`` loading the same checkpoint with ``build_sam2``
    (one predictor per image, so a test going back and forth encodes each image once)."""

    def __init__(self, checkpoint: Path) -> None:
        self._model = _build(checkpoint)
        self._predictors: dict[bytes, object] = {}

    def __call__(
        self, pixels: np.ndarray, points: Sequence[tuple[float, float]] = (), labels: Sequence[int] = (),
        box: tuple[float, float, float, float] | None = None, multimask: bool = False,
    ) -> np.ndarray:  # fmt: skip
        """The best mask (highest predicted IoU) for the prompts, in pixels."""
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        key = hashlib.sha256(pixels.tobytes()).digest()
        predictor = self._predictors.get(key)
        if predictor is None:
            predictor = self._predictors[key] = SAM2ImagePredictor(self._model)
            predictor.set_image(pixels)
        masks, scores, _ = predictor.predict(
            point_coords=np.array(points, dtype=np.float32) if len(points) else None,
            point_labels=np.array(labels) if len(points) else None,
            box=np.array(box, dtype=np.float32) if box else None,
            multimask_output=multimask,
        )
        return masks[int(np.argmax(scores))] > 0
