"""Grounding DINO for tests: a tiny transformers model with random weights, its processor and a
tokenizer made from a small local vocabulary, saved as a model folder the way
`lsfn weights grounding_dino` lays out IDEA-Research/grounding-dino-tiny.

Random weights give arbitrary but deterministic boxes, scores and phrases: enough to test the
plumbing (batching, thresholds, phrase to label, SAM 2 on the boxes) against the same model
run in the test process.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VOCABULARY", "write_model"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Words the tests' prompts and labels use; anything else would be [UNK].
VOCABULARY = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , a an the red green blue white brown black cat cats kitten dog "
    "house player football person square circle triangle shape object car tree light traffic"
).split()
# The processor resizes images to at most this (the real model works at 800 x 1333): small
# enough for the CPU, and the model's pixel padding and batching are the same.
IMAGE_SIZE = {"shortest_edge": 96, "longest_edge": 160}


def write_model(folder: Path, num_queries: int = 20, seed: int = 0, image_size: dict[str, int] | None = IMAGE_SIZE) -> Path:
    """A random-weight tiny Grounding DINO (Swin backbone, 1-layer BERT text encoder) saved
    with its processor into ``folder``; ``image_size=None`` keeps the real model's resize."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    # transformers 5 reads vocab_file= as nothing at all ([UNK] for every word): pass the words.
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCABULARY)}, do_lower_case=True)
    text = BertConfig(vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)  # fmt: skip
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                          out_features=["stage2", "stage3", "stage4"])  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=num_queries,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(**({"size": image_size} if image_size else {})), tokenizer=tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
