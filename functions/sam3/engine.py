"""SAM 3 through transformers: one image embedding, then concept prompts (text, exemplar boxes:
every matching instance) and clicks (points, boxes: one mask per prompt) on it.

The model folder is ``facebook/sam3`` as the hub holds it: one checkpoint that transformers loads
both as ``Sam3Model`` (the concept detector: ViT backbone, CLIP text encoder, DETR encoder and
decoder, mask head) and as ``Sam3TrackerModel`` (SAM 2's prompt encoder and mask decoder on
their own FPN neck over the same backbone). Loaded that way the backbone exists twice; here the
tracker's is replaced by the detector's, so one copy is kept and one ViT pass per image feeds
both paths (``embed``). The tracker's features are computed as ``Sam3TrackerModel`` computes
them (its neck, ``conv_s0``/``conv_s1`` on the two finer levels, ``no_memory_embedding`` added
to the coarsest level the mask decoder reads), keeping the levels its ``backbone_feature_sizes``
lists: with a four-level neck transformers' ``Sam3TrackerModel`` adds the embedding to the
fourth, which it then drops (transformers 5.24), where Meta's tracker and transformers'
``Sam3VideoModel`` add it to the third.

Pre- and post-processing are transformers' own: ``Sam3Processor`` (image resize and
normalisation, tokenizer, exemplar boxes, ``post_process_instance_segmentation``) and
``Sam3TrackerProcessor`` (point and box coordinates, ``post_process_masks``). Text features are
computed once per prompt (``encode_text``) and reused on any number of images. The model holds
no per-image state: an embedding is a value any number of requests use at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Before transformers is imported: a missing file must fail, never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from lsfn.functions.torch_device import inference  # noqa: E402
from lsfn.shared.weights import WeightsError  # noqa: E402

__all__ = ["REQUIRED_FILES", "Embedding", "Instance", "Sam3Engine", "TextFeatures"]

# A model folder without these is not one (the processor's files vary by transformers version).
REQUIRED_FILES = ("config.json", "model.safetensors")
# Prompts per detector pass on one image (each is a batch entry of the DETR encoder and decoder).
PROMPTS_PER_PASS = 8


@dataclass(frozen=True)
class Embedding:
    """One image's features on the model's device, for both prompt paths, and its size.

    ``detector`` is the detector neck's FPN levels (finest first, batch 1), ``tracker`` the
    tracker's as its mask decoder reads them (projected finer levels, ``no_memory_embedding``
    added to the coarsest)."""

    detector: tuple[Any, ...]
    tracker: tuple[Any, ...]
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.detector, *self.tracker))


@dataclass(frozen=True)
class TextFeatures:
    """Concept prompts encoded once by the CLIP text encoder, on the model's device."""

    prompts: tuple[str, ...]
    embeds: Any  # (prompts, tokens, hidden): the text encoder's projected output
    mask: Any  # (prompts, tokens): 1 for a token, 0 for padding

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Instance:
    """One instance a concept prompt found: its score, its box (x0, y0, x1, y1) in pixels of the
    image and its mask (H, W) bool at the image's size."""

    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray


class Sam3Engine:
    """A loaded SAM 3: the concept detector and the click tracker on one shared ViT backbone."""

    def __init__(self, detector: Any, tracker: Any, processor: Any, tracker_processor: Any, device: Any) -> None:
        self.detector = detector
        self.tracker = tracker
        self.processor = processor
        self.tracker_processor = tracker_processor
        self.device = device
        self.backbone = detector.vision_encoder.backbone
        self.patch_size = int(detector.config.vision_config.backbone_config.patch_size)
        # The levels the tracker's mask decoder reads: image embedding last, finer ones before.
        self.tracker_levels = len(tracker.backbone_feature_sizes)

    @classmethod
    def load(cls, folder: Path, device: str) -> Sam3Engine:
        """Load a transformers SAM 3 folder (``facebook/sam3``: config, weights, processor,
        tokenizer); a missing, unreadable or incomplete folder is a WeightsError naming what is
        wrong."""
        import torch
        from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no loading bars in the function's JSON log
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise WeightsError(f"SAM 3 model folder {folder} lacks {', '.join(missing)} (the files of facebook/sam3)")
        try:
            detector, detector_info = Sam3Model.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            tracker, tracker_info = Sam3TrackerModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            processor = Sam3Processor.from_pretrained(folder, local_files_only=True)
            tracker_processor = Sam3TrackerProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable folder is the same clear startup error
            raise WeightsError(f"cannot load SAM 3 from {folder}: {type(exc).__name__}: {str(exc)[:300]}") from None
        for part, info in (("detector", detector_info), ("tracker", tracker_info)):
            absent = sorted(info.get("missing_keys") or ())
            if absent:  # a Sam3Model-only checkpoint has no tracker, for one
                raise WeightsError(
                    f"SAM 3 folder {folder} lacks the {part}'s weights: {len(absent)} missing (e.g. {absent[:3]}); "
                    "it must be a facebook/sam3 checkpoint (detector and tracker in one)"
                )
        # One backbone for both: the tracker's copy (the same weights) is dropped.
        tracker.vision_encoder.backbone = detector.vision_encoder.backbone
        target = torch.device(device)
        return cls(detector.to(target).eval(), tracker.to(target).eval(), processor, tracker_processor, target)

    def to(self, device: str) -> None:
        """Move the models to ``device`` (set up on the CPU, moved after a memory snapshot)."""
        import torch

        self.device = torch.device(device)
        self.detector.to(self.device)
        self.tracker.to(self.device)

    def _inference(self) -> contextlib.AbstractContextManager[None]:
        return inference(self.device)  # bf16 on CUDA, float32 elsewhere

    # -----------------------------------------------------------------------------------------
    # The image

    def embed(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        """The embeddings of RGB uint8 (H, W, 3) images of any sizes, in one vision-encoder pass:
        each is resized to the model's input size (1008 x 1008 for facebook/sam3)."""
        import torch

        if not images:
            return []
        with self._inference():
            # Resized on the model's device: a 4K frame crosses the bus as bytes, not floats.
            tensors = [torch.from_numpy(np.require(image, requirements=['C', 'W'])).permute(2, 0, 1) for image in images]  # a copy only of a read-only image
            pixels = self.processor.image_processor(tensors, return_tensors="pt", device=self.device)["pixel_values"]
            pixels = pixels.to(self.device)
            hidden = self.backbone(pixels).last_hidden_state  # (batch, patches, channels)
            batch, height, width = pixels.shape[0], pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
            spatial = hidden.view(batch, height, width, -1).permute(0, 3, 1, 2)
            detector_maps, _ = self.detector.vision_encoder.neck(spatial)
            tracker_maps = list(self.tracker.vision_encoder.neck(spatial)[0][: self.tracker_levels])
            decoder = self.tracker.mask_decoder
            tracker_maps[0] = decoder.conv_s0(tracker_maps[0])
            tracker_maps[1] = decoder.conv_s1(tracker_maps[1])
            tracker_maps[-1] = tracker_maps[-1] + self.tracker.no_memory_embedding.view(1, -1, 1, 1)
        # Copies per image: a cached embedding must not keep the whole batch's storage alive.
        return [
            Embedding(
                detector=tuple(level[i : i + 1].clone() for level in detector_maps),
                tracker=tuple(level[i : i + 1].clone() for level in tracker_maps),
                height=int(image.shape[0]),
                width=int(image.shape[1]),
            )
            for i, image in enumerate(images)
        ]

    # -----------------------------------------------------------------------------------------
    # Concept prompts

    def encode_text(self, prompts: Sequence[str]) -> TextFeatures:
        """The text encoder's features of ``prompts`` (one pass for all of them)."""
        tokens = self.processor.tokenizer(list(prompts), return_tensors="pt", padding="max_length", max_length=32, truncation=True)
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        with self._inference():
            embeds = self.detector.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True).pooler_output
        return TextFeatures(prompts=tuple(prompts), embeds=embeds, mask=mask)

    def concept(
        self,
        embedding: Embedding,
        prompts: Sequence[str] | TextFeatures,
        exemplars: Sequence[tuple[Sequence[float], bool]] = (),
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        max_instances: int | None = None,
    ) -> list[list[Instance]]:
        """Every instance of each prompt on the image: per prompt, the instances scoring above
        ``threshold`` (best first; at most ``max_instances`` over all the prompts, the highest
        scores), masks cut at ``mask_threshold``
        (of the sigmoid). ``exemplars`` are boxes (x0, y0, x1, y1) in pixels, positive or not,
        given with every prompt (transformers' ``input_boxes`` and ``input_boxes_labels``).
        Post-processing does no NMS: overlapping instances are all returned."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if not len(prompts):
            return []
        text = prompts if isinstance(prompts, TextFeatures) else self.encode_text(prompts)
        size = [embedding.height, embedding.width]
        # The best ``max_instances`` queries over every prompt, chosen on their scores before any
        # mask is upscaled: a config with many labels and a low threshold must not make
        # thousands of full-size masks. Only the kept queries' low-resolution outputs are held.
        kept: list[tuple[float, int, SimpleNamespace]] = []
        for start in range(0, len(text), PROMPTS_PER_PASS):
            count = min(PROMPTS_PER_PASS, len(text) - start)
            with self._inference():
                levels = tuple(level.expand(count, -1, -1, -1) for level in embedding.detector)
                positions = tuple(self.detector.vision_encoder.neck.position_encoding(level.shape, level.device, level.dtype) for level in levels)
                inputs: dict[str, Any] = {}
                if exemplars:
                    boxes = [[list(map(float, box)) for box, _ in exemplars]] * count
                    labels = [[int(bool(positive)) for _, positive in exemplars]] * count
                    encoded = self.processor(original_sizes=[size] * count, input_boxes=boxes, input_boxes_labels=labels, return_tensors="pt")
                    inputs = {"input_boxes": encoded["input_boxes"].to(self.device), "input_boxes_labels": encoded["input_boxes_labels"].to(self.device)}
                outputs = self.detector(
                    vision_embeds=Sam3VisionEncoderOutput(fpn_hidden_states=levels, fpn_position_encoding=positions),
                    text_embeds=BaseModelOutputWithPooling(pooler_output=text.embeds[start : start + count]),
                    attention_mask=text.mask[start : start + count],
                    **inputs,
                )
                for i in range(count):
                    kept.extend(self._candidates(outputs, i, start + i, threshold))
                if max_instances is not None and len(kept) > max_instances:
                    kept.sort(key=lambda c: -c[0])
                    del kept[max_instances:]
            del outputs
        kept.sort(key=lambda c: -c[0])
        results: list[list[Instance]] = [[] for _ in range(len(text))]
        for _, prompt, view in kept[:max_instances]:
            with self._inference():
                (found,) = self.processor.post_process_instance_segmentation(view, threshold=threshold, mask_threshold=mask_threshold,
                                                                            target_sizes=[size])  # fmt: skip
            for score, box, mask in zip(found["scores"].tolist(), found["boxes"].tolist(), found["masks"].bool().cpu().numpy()):
                results[prompt].append(Instance(score=float(score), box=(box[0], box[1], box[2], box[3]), mask=mask))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return results

    def _candidates(self, outputs: Any, i: int, prompt: int, threshold: float) -> list[tuple[float, int, SimpleNamespace]]:
        """Batch entry ``i``'s queries above ``threshold``: (score, prompt, a one-query view of
        the outputs, copied, for ``post_process_instance_segmentation``)."""
        logits = outputs.pred_logits[i : i + 1].float()
        presence = outputs.presence_logits[i : i + 1].float() if outputs.presence_logits is not None else None
        scores = logits.sigmoid() * (presence.sigmoid() if presence is not None else 1.0)  # the post-processing's score
        out = []
        for query in (scores[0] > threshold).nonzero().flatten().tolist():
            view = SimpleNamespace(
                pred_logits=logits[:, query : query + 1].clone(),
                pred_boxes=outputs.pred_boxes[i : i + 1, query : query + 1].float().clone(),
                pred_masks=outputs.pred_masks[i : i + 1, query : query + 1].float().clone(),
                presence_logits=presence.clone() if presence is not None else None,
            )
            out.append((float(scores[0, query]), prompt, view))
        return out

    # -----------------------------------------------------------------------------------------
    # Clicks and boxes

    def track(
        self,
        embedding: Embedding,
        points: np.ndarray,
        positive: np.ndarray,
        boxes: np.ndarray,
        multimask: bool,
        mask_threshold: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks (K, H, W) bool at the image's size and their predicted IoU (K,): one mask per
        box (each with every point), or one for the points alone; points (N, 2) and boxes
        (K, 4) in pixels. With ``multimask`` the decoder proposes three masks per prompt and the
        one of highest predicted IoU is kept (and only it is upscaled)."""
        import torch

        size = [embedding.height, embedding.width]
        point_xy = np.asarray(points, dtype=np.float32).reshape(-1, 2).tolist()
        point_labels = np.asarray(positive).reshape(-1).astype(int).tolist()
        box_xy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).tolist()
        if not point_xy and not box_xy:
            raise ValueError("track needs a point or a box")
        prompts = max(len(box_xy), 1)
        kwargs: dict[str, Any] = {}
        if point_xy:
            kwargs["input_points"] = [[point_xy] * prompts]
            kwargs["input_labels"] = [[point_labels] * prompts]
        if box_xy:
            kwargs["input_boxes"] = [box_xy]
        encoded = self.tracker_processor(original_sizes=[size], return_tensors="pt", **kwargs)
        inputs = {key: encoded[key].to(self.device) for key in ("input_points", "input_labels", "input_boxes") if key in encoded}
        with self._inference():
            outputs = self.tracker(image_embeddings=list(embedding.tracker), multimask_output=multimask, **inputs)
            iou = outputs.iou_scores[0].float()  # (prompts, masks)
            best = iou.argmax(dim=1)
            chosen = torch.arange(prompts, device=iou.device)
            low_res = outputs.pred_masks[0, chosen, best][:, None].float()  # (prompts, 1, h, w)
            # One mask at a time at full size: a 4K float mask is 33 MB.
            masks = np.stack([
                self.tracker_processor.post_process_masks([low_res[k : k + 1]], [size], mask_threshold=mask_threshold)[0][0, 0].cpu().numpy()
                for k in range(prompts)
            ])  # fmt: skip
            scores = iou[chosen, best].cpu().numpy()
        return masks, scores
