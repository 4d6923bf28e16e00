"""Grounding DINO through transformers: images and a caption in, boxes with the phrase each one
answers out, many images per forward pass.

transformers' ``GroundingDinoForObjectDetection`` and ``GroundingDinoProcessor`` are used
rather than the ``groundingdino-py`` package: they batch images of different sizes natively
(padding with a pixel mask), ship the pre- and post-processing, load safetensors folders, and
run on the transformers 5 the rest of the project's environment has (groundingdino-py needs
transformers 4); functions/grounding_dino/README.md has the measured comparison. The model
folder holds the weights, the text encoder's config and the tokenizer: nothing is fetched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before transformers is imported: a missing file must fail, never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from lsfn.shared.runtime.errors import TaskError  # noqa: E402
from lsfn.shared.weights import WeightsError  # noqa: E402

__all__ = ["Detection", "DinoEngine"]

# Detections kept per image (the real model proposes 900 boxes; a threshold of 0 keeps them all).
MAX_DETECTIONS = 100
# A model folder without this is not one (the processor's files vary by transformers version).
REQUIRED_FILES = ("config.json",)


@dataclass(frozen=True)
class Detection:
    """A box in pixels of the image (x0, y0, x1, y1), its score and the caption words it answers."""

    box: tuple[float, float, float, float]
    score: float
    phrase: str


class DinoEngine:
    """A loaded Grounding DINO model and its processor."""

    def __init__(self, model: Any, processor: Any, device: Any, batch_size: int) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: Path, device: str, batch_size: int) -> DinoEngine:
        """Load a transformers Grounding DINO folder (config, weights, processor, tokenizer);
        a missing or unreadable folder is a WeightsError naming what is wrong."""
        import torch
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no loading bars in the function's JSON log
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise WeightsError(f"Grounding DINO model folder {folder} lacks {', '.join(missing)} (see lsfn weights grounding_dino)")
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(folder, local_files_only=True)
            processor = GroundingDinoProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable folder is the same clear startup error
            raise WeightsError(f"cannot load Grounding DINO from {folder}: {type(exc).__name__}: {str(exc)[:300]}") from None
        target = torch.device(device)
        return cls(model.to(target).eval(), processor, target, batch_size)

    def to(self, device: str) -> None:
        """Move the model to ``device`` (set up on the CPU, moved after a memory snapshot)."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)

    def detect(self, images: list[np.ndarray], caption: str, box_threshold: float, text_threshold: float,
               on_pass: Callable[[], None] | None = None) -> list[list[Detection]]:  # fmt: skip
        """Detections per image (RGB uint8 arrays of any sizes), ``batch_size`` images per
        forward pass (``on_pass`` is called after each), at most MAX_DETECTIONS per image, best
        first. A box is kept when its best token scores above ``box_threshold``; its phrase is
        the caption's words scoring above ``text_threshold`` (Grounding DINO's rule)."""
        # Once per call, not per forward pass: the caption is the same for every image.
        tokens = len(self.processor.tokenizer(caption)["input_ids"])
        limit = int(getattr(self.model.config, "max_text_len", 256))
        if tokens > limit:  # the text encoder would fail on it (a shape error deep inside)
            raise TaskError(f"the prompt is {tokens} tokens long and Grounding DINO reads at most {limit}: "
                            "type a shorter prompt, or give the control fewer labels and synonyms")  # fmt: skip
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._detect(images[start : start + self.batch_size], caption, box_threshold, text_threshold))
            if on_pass is not None:
                on_pass()
        return out

    def _clean(self, phrase: str) -> str:
        """A decoded phrase without the tokenizer's markers ("red cat. [SEP]" -> "red cat.")."""
        for token in self.processor.tokenizer.all_special_tokens:
            phrase = phrase.replace(token, " ")
        return " ".join(phrase.split())

    def _detect(self, images: list[np.ndarray], caption: str, box_threshold: float, text_threshold: float) -> list[list[Detection]]:
        import torch

        inputs = self.processor(images=images, text=[caption] * len(images), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        found = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=[image.shape[:2] for image in images],
        )
        results = []
        for item in found:
            # The best MAX_DETECTIONS: each box may become a full-size mask downstream.
            best = item["scores"].argsort(descending=True, stable=True)[:MAX_DETECTIONS].tolist()
            boxes = item["boxes"][best].float().cpu().numpy().tolist()  # one copy per image
            scores = item["scores"][best].float().cpu().numpy().tolist()
            phrases = [self._clean(str(item["text_labels"][i])) for i in best]
            results.append([Detection(tuple(b), s, p) for b, s, p in zip(boxes, scores, phrases)])
        return results
