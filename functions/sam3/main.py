"""The SAM 3 function: name a concept, get every instance's mask; click, get one mask; both from
one image embedding (functions/sam3/engine.py).

What a request asks, in this order:
1. Clicks and boxes in the interactive context (KeyPointLabels, RectangleLabels): the tracker
   path, one mask per prompt set, as SAM 2 answers them.
2. Text typed into a TextArea (or a box drawn with a RectangleLabels control marked
   ``exemplar="true"``): the concept path, every instance above the threshold, the typed
   phrases (``prompt_label`` names the label) with the exemplar boxes.
3. No context ("Retrieve predictions", batch pre-annotation): each label of the output control,
   with its ``predicted_values`` as synonyms, is a concept prompt on every image; every
   instance is labelled with the label it came from; an instance two synonyms found is kept once.

Masks answer the BrushLabels (RLE) or PolygonLabels control; a RectangleLabels control on the same
image that is not the exemplar one also gets each instance's box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lsfn.functions.sam2.embeddings import EmbeddingCache
from lsfn.functions.sam3.engine import Embedding, Instance, Sam3Engine
from lsfn.functions.sam3.spec import Sam3Spec, model_folder
from lsfn.functions.torch_device import TorchModel
from lsfn.shared import coords, results
from lsfn.shared.label_config import Control, LabelConfig
from lsfn.shared.prompts import mask_control, output_label, prompts_for
from lsfn.shared.protocol import Context
from lsfn.shared.runtime import Batch, Prediction, create_app, http_target, warmup_image
from lsfn.shared.text_prompts import TextPrompt, text_prompt

# The attribute that marks a RectangleLabels control's boxes as exemplars of the typed concept.
EXEMPLAR = "exemplar"


class _OneImage:
    """The engine as the embedding cache calls it: one image at a time."""

    def __init__(self, engine: Sam3Engine) -> None:
        self.engine = engine

    def embed(self, pixels: np.ndarray) -> Embedding:
        return self.engine.embed([pixels])[0]


def _exemplar_controls(config: LabelConfig) -> set[str]:
    return {c.name for c in config.controls if c.tag == "RectangleLabels" and c.get_bool(EXEMPLAR)}


def _box_control(config: LabelConfig, target: str, exemplars: set[str]) -> Control | None:
    """A RectangleLabels on the image that is not the exemplar one: it gets the instances' boxes."""
    return next((c for c in config.controls if c.tag == "RectangleLabels" and c.object.name == target and c.name not in exemplars), None)


def _without(context: Context | None, names: set[str]) -> Context | None:
    if context is None:
        return None
    return Context(result=[r for r in context.result if r.from_name not in names])


def _same(a: Instance, b: Instance, limit: float) -> bool:
    """Whether two instances' masks overlap at least ``limit`` (IoU); boxes that do not meet are
    ruled out first, without touching the full-size masks."""
    if a.box[0] >= b.box[2] or b.box[0] >= a.box[2] or a.box[1] >= b.box[3] or b.box[1] >= a.box[3]:
        return False
    union = np.logical_or(a.mask, b.mask).sum()
    return bool(union) and float(np.logical_and(a.mask, b.mask).sum() / union) >= limit


class Sam3Model(Sam3Spec, TorchModel):
    # Images are fetched here, not by the runtime: a follow-up click must not fetch at all.
    fetch_objects = frozenset()

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.engine: Sam3Engine | None = None

    def setup(self) -> None:
        options = self.options
        self.engine = Sam3Engine.load(model_folder(self.settings.model_root, options.checkpoint), self.device)
        self.cache = EmbeddingCache(_OneImage(self.engine), max_entries=options.cache_entries, max_bytes=options.cache_bytes,
                                    url_ttl=options.url_ttl, counter="sam3_vision_encoder")  # fmt: skip
        self.model_version = self.version_for(None)

    def move_to(self, device: str) -> bool:
        assert self.engine is not None
        self.engine.to(self.use_device(device))
        return True

    def warmup(self) -> None:
        assert self.engine is not None
        frame = warmup_image()
        (embedding,) = self.engine.embed([frame])
        self.engine.concept(embedding, ["object"], threshold=self.settings.model_score_threshold)
        middle = np.array([[frame.shape[1] / 2, frame.shape[0] / 2]])
        self.engine.track(embedding, middle, np.array([True]), np.zeros((0, 4)), multimask=True)

    # -- the request ------------------------------------------------------------------------

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        config, context = batch.label_config, batch.context
        control = mask_control(config, context)
        target = control.object.name
        exemplars = _exemplar_controls(config)
        boxes_to = _box_control(config, target, exemplars)
        threshold = control.model_score_threshold
        threshold = self.settings.model_score_threshold if threshold is None else threshold
        typed = text_prompt(context, control) if context is not None and context.texts() else None
        exemplar_regions = [r for r in (context.regions("rectanglelabels") if context else []) if r.from_name in exemplars]
        clicks = _without(context, exemplars)
        if typed is None and not exemplar_regions and prompts_for(clicks, target, 100, 100):
            return [self._track(batch, control, clicks, task) for task in batch.tasks]
        if typed is None and exemplar_regions:  # exemplars alone: the label picked on them names the concept
            label = output_label(control, [label for r in exemplar_regions for label in r.labels])
            typed = TextPrompt((label.lower(),), (label,), typed=True)
        prompt = typed or text_prompt(None, control)
        if prompt is None:
            return [results.prediction([]) for _ in batch.tasks]
        return self._concepts(batch, control, boxes_to, prompt, exemplar_regions if typed else [], threshold)

    def _track(self, batch: Batch, control: Control, context: Context | None, task: Any) -> Prediction:
        assert self.engine is not None
        target = control.object.name
        embedding = self.cache.embedding(batch.source(task, target), batch.telemetry)
        prompts = prompts_for(context, target, embedding.width, embedding.height)
        single_click = len(prompts.points) == 1 and len(prompts.boxes) == 0
        with batch.telemetry.phase("mask-decoder"):
            masks, scores = self.engine.track(embedding, prompts.points, prompts.positive, prompts.boxes, multimask=single_click,
                                              mask_threshold=0.0)  # fmt: skip
        batch.telemetry.count("sam3_tracker")
        label = output_label(control, prompts.labels)
        with batch.telemetry.phase("rle"):
            regions = [results.mask_region(control.tag, control.name, target, label, m, score=float(s)) for m, s in zip(masks, scores)]
        return results.prediction(r for r in regions if r is not None)

    def _embeddings(self, batch: Batch, target: str) -> list[Embedding]:
        """Every task's embedding: from the cache for an interactive request (a typed prompt after
        a click reuses it), else several images per vision-encoder pass."""
        assert self.engine is not None
        telemetry = batch.telemetry
        if batch.is_interactive:
            return [self.cache.embedding(batch.source(task, target), telemetry) for task in batch.tasks]
        images = []
        for task in batch.tasks:
            source = batch.source(task, target)
            images.append(source.decode(source.fetch()).pixels)
        size = self.options.batch_size or (8 if self.device == "cuda" else 1)
        out: list[Embedding] = []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            with telemetry.phase("image-encoder"):
                out.extend(self.engine.embed(chunk))
            telemetry.count("sam3_vision_encoder")
        return out

    def _concepts(self, batch: Batch, control: Control, boxes_to: Control | None, prompt: TextPrompt,
                  exemplar_regions: list[Any], threshold: float) -> list[Prediction]:  # fmt: skip
        assert self.engine is not None
        options, telemetry, target = self.options, batch.telemetry, control.object.name
        embeddings = self._embeddings(batch, target)
        with telemetry.phase("text-encoder"):
            text = self.engine.encode_text(list(prompt.phrases))  # once per request, for every image
        telemetry.count("sam3_text_encoder")
        out: list[Prediction] = []
        for embedding in embeddings:
            exemplars = [(coords.box_xyxy(coords.rect_from_percent(r.value, embedding.width, embedding.height)), r.is_positive is not False)
                         for r in exemplar_regions]  # fmt: skip
            with telemetry.phase("detector"):
                found = self.engine.concept(embedding, text, exemplars, threshold=threshold, mask_threshold=options.mask_threshold,
                                            max_instances=options.max_instances)  # fmt: skip
            telemetry.count("sam3_detector", len(prompt.phrases))
            instances = self._merged(found, prompt)
            with telemetry.phase("rle"):
                regions = []
                for label, instance in instances[: options.max_instances]:
                    region = results.mask_region(control.tag, control.name, target, label, instance.mask, score=instance.score)
                    if region is not None:
                        regions.append(region)
                    if boxes_to is not None:
                        x0, y0, x1, y1 = instance.box
                        value = coords.rect_to_percent(coords.PixelRect(x0, y0, x1 - x0, y1 - y0), embedding.width, embedding.height)
                        regions.append(results.rectangle(boxes_to.name, target, label, value, size=(embedding.width, embedding.height),
                                                         score=instance.score))  # fmt: skip
            score = max((instance.score for _, instance in instances), default=None)
            out.append(results.prediction(regions, score=score))
        return out

    def _merged(self, found: list[list[Instance]], prompt: TextPrompt) -> list[tuple[str, Instance]]:
        """Every instance with its label, best first; one instance two phrases of a label found
        (synonyms) is kept once."""
        ranked = sorted(((prompt.labels[i], inst) for i, phrase in enumerate(found) for inst in phrase), key=lambda p: -p[1].score)
        kept: list[tuple[str, Instance]] = []
        for label, instance in ranked:
            if not any(label == other and _same(instance, found, self.options.duplicate_iou) for other, found in kept):
                kept.append((label, instance))
        return kept


app = create_app(Sam3Model)
handler = http_target(app)
