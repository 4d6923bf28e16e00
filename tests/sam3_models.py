"""SAM 3 for tests: a tiny transformers model with random weights, laid out as the real
``facebook/sam3`` folder is, and cached on disk.

``facebook/sam3`` is one checkpoint of transformers' ``Sam3VideoModel``: a ``config.json`` of
model type ``sam3_video`` (a ``detector_config`` and a ``tracker_config``), one
``model.safetensors`` whose keys start ``detector_model.`` (the concept detector, with the ViT
backbone and the CLIP text encoder), ``tracker_model.`` (the SAM 2-style prompt encoder and mask
decoder, memory modules, no vision encoder) and ``tracker_neck.`` (the tracker's own FPN on the
shared backbone), and the processor's files (image processor, CLIP BPE tokenizer). Both
``Sam3Model.from_pretrained(folder)`` and ``Sam3TrackerModel.from_pretrained(folder)`` load from
it: transformers maps ``detector_model.vision_encoder.backbone.`` and ``tracker_neck.`` onto the
tracker's vision encoder (conversion_mapping.py, "sam3_tracker"). ``write_model`` writes the
same layout with every size shrunk (ViT hidden 32, 2 layers, 224-pixel input; a 1-layer CLIP
text encoder of hidden 32; 1-layer DETR encoder and decoder, 20 queries) and a tokenizer made
from a small local vocabulary, so nothing is downloaded.

The tracker's vision config has three FPN levels (scale factors 4, 2, 1) where the detector's
has four (4, 2, 1, 0.5): transformers' ``Sam3TrackerModel`` adds its ``no_memory_embedding`` to
the last level it computes and then keeps only as many levels as ``backbone_feature_sizes``
lists (three), so with four levels the embedding lands on the level it drops (transformers
5.24, ``Sam3TrackerModel.get_image_embeddings`` and ``forward``). With three, transformers'
own tracker is a faithful reference for the function's click path; the fourth level of
``tracker_neck`` in the checkpoint is then an unused weight to the tracker, as it is to
``Sam3VideoModel`` (which slices it off); ``write_model(..., tracker_levels=4)`` writes the
four-level variant, same weights. ``no_memory_embedding`` is random here (transformers
initialises it to zeros), so a click path that forgot it would not match, and the score heads'
weights are scaled up so that scores spread over (0.13, 0.35) instead of all sitting at 0.25.

Random weights make arbitrary but deterministic scores, boxes and masks that depend on the image
and the prompts: enough to check the function against transformers' own models run on the same
weights and inputs, not to check that a mask is any good.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.model_cache import locked, prune

__all__ = ["IMAGE_SIZE", "WORDS", "model_dir", "write_model"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The model's input size (the real one works at 1008 x 1008): a multiple of the 14-pixel patch.
IMAGE_SIZE = 224
# Words the tests' prompts use, each one token of the tokenizer; any other text is spelt out in
# single characters (every byte is in the vocabulary), never an unknown token. "visual" is the
# text transformers' processor puts with exemplar boxes when no text is given.
WORDS = (
    "a the red green blue white black cat cats dog dogs person people car cars tree square squares "
    "circle circles triangle triangles shape object box visual"
).split()
SEED = 0
_HIDDEN = 32
_PATCH = 14
# Queries of the DETR decoder (200 in the real model): instances proposed per prompt.
_QUERIES = 20
# Scales the score heads' random weights (see write_model).
_SCORE_GAIN = 30.0


def _tokenizer() -> Any:
    """A CLIP byte-level BPE tokenizer: every byte alone and at a word's end, and merges that
    make each of WORDS one token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:  # left to right: "cat" is c+a, then ca+t</w>
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=32)


def _config(vocab_size: int, bos: int, eos: int, tracker_levels: int) -> Any:
    from transformers import Sam3VideoConfig

    grid = IMAGE_SIZE // _PATCH  # 16 patches a side (72 in the real model)
    feature_sizes = [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]]
    backbone = {
        "model_type": "sam3_vit_model", "hidden_size": _HIDDEN, "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": _PATCH,
        "window_size": grid // 2, "global_attn_indexes": [1], "pretrain_image_size": IMAGE_SIZE // 2,
    }  # fmt: skip
    vision = {
        "model_type": "sam3_vision_model", "backbone_config": backbone, "fpn_hidden_size": _HIDDEN,
        "scale_factors": [4.0, 2.0, 1.0, 0.5], "backbone_feature_sizes": feature_sizes,
    }  # fmt: skip
    layers = {"hidden_size": _HIDDEN, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 2 * _HIDDEN}
    detector = {
        "model_type": "sam3",
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": vocab_size, "hidden_size": _HIDDEN,
            "intermediate_size": 2 * _HIDDEN, "projection_dim": _HIDDEN, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
        },
        "geometry_encoder_config": layers,
        "detr_encoder_config": layers,
        "detr_decoder_config": {**layers, "num_queries": _QUERIES},
        "mask_decoder_config": {"hidden_size": _HIDDEN, "num_attention_heads": 2},
    }  # fmt: skip
    tracker = {
        "model_type": "sam3_tracker_video",
        "image_size": IMAGE_SIZE,  # read by the config itself: without it, 1008
        "vision_config": {**vision, "scale_factors": [4.0, 2.0, 1.0, 0.5][:tracker_levels]},
        "prompt_encoder_config": {"hidden_size": _HIDDEN, "image_size": IMAGE_SIZE, "patch_size": _PATCH},
        "mask_decoder_config": {"hidden_size": _HIDDEN, "mlp_dim": 2 * _HIDDEN, "num_attention_heads": 2, "iou_head_hidden_dim": _HIDDEN},
        # The video memory: in the checkpoint, unused for single images.
        "memory_attention_hidden_size": _HIDDEN, "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 2 * _HIDDEN, "memory_attention_rope_feat_sizes": [grid, grid],
        "memory_encoder_hidden_size": _HIDDEN, "memory_encoder_output_channels": 16,
        "mask_downsampler_embed_dim": _HIDDEN, "memory_fuser_embed_dim": _HIDDEN,
        "memory_fuser_intermediate_dim": 2 * _HIDDEN, "memory_fuser_num_layers": 1,
    }  # fmt: skip
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def write_model(folder: Path, seed: int = SEED, tracker_levels: int = 3) -> Path:
    """A random-weight tiny SAM 3 saved into ``folder`` as ``facebook/sam3`` is laid out: config,
    one safetensors file, processor and tokenizer files. Returns ``folder``. ``tracker_levels``
    (3 or 4) is the FPN levels of the tracker's vision config; the weights are the same either
    way (the checkpoint's ``tracker_neck`` has the detector's four)."""
    import torch
    from transformers import Sam3ImageProcessor, Sam3VideoModel, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    tokenizer = _tokenizer()
    config = _config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tracker_levels)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    with torch.no_grad():
        # Initialised to zeros: random, so that a click path leaving it out shows.
        model.tracker_model.no_memory_embedding.normal_(0.0, 0.5)
        # Random scores all sit near 0.25 (sigmoid(~0) x sigmoid(~0)); larger logits spread
        # them over (0, 1), so thresholds select some instances and not others.
        detector = model.detector_model
        detector.dot_product_scoring.query_proj.weight.mul_(_SCORE_GAIN)
        detector.dot_product_scoring.query_proj.bias.mul_(_SCORE_GAIN)
        detector.detr_decoder.presence_head.layer3.weight.mul_(_SCORE_GAIN)
    folder.mkdir(parents=True, exist_ok=True)
    # The keys as the model names them (detector_model., tracker_model., tracker_neck.), as in
    # facebook/sam3. transformers 5.24 saving "the original format" writes the tracker's keys
    # as tracker_model.tracker_model. (its tracker mapping reversed once too often), which no
    # loader reads.
    model.save_pretrained(folder, save_original_format=False)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    Sam3VideoProcessor(
        image_processor=Sam3ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, size=size),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Cache


@functools.cache
def _cache_root() -> Path:
    """``~/.cache/lsfn/sam3-model-<key>`` (``$XDG_CACHE_HOME`` respected): the key hashes this
    file and the transformers and torch versions, so any change that could alter the model
    builds it afresh."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in ("transformers", "torch"):
        digest.update(metadata.version(package).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsfn"
    return cache / f"sam3-model-{digest.hexdigest()[:16]}"


def model_dir() -> Path:
    """The tiny model's folder, built once per key (about a second) and reused afterwards; its
    ``build.json`` holds how long the build took."""
    root = _cache_root()
    folder = root / "sam3"
    if (folder / "model.safetensors").is_file():
        (root / ".last-used").touch()
        return folder
    root.mkdir(parents=True, exist_ok=True)
    (root / ".last-used").touch()
    prune(root, "sam3-model-*")
    with locked(root / ".lock"):  # one builder at a time; another process waits, then finds it
        if (folder / "model.safetensors").is_file():
            return folder
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as scratch:
            start = time.perf_counter()
            built = write_model(Path(scratch) / "sam3")
            (built / "build.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 3)}))
            os.replace(built, folder)  # atomic: a folder present is complete
    return folder
