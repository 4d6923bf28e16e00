"""The torch device every model function runs on, from DEVICE (auto, cpu, cuda, mps)."""

from __future__ import annotations


def pick_device(setting: str) -> str:
    """``auto`` is CUDA when there is one, else the CPU. On CUDA, matmuls and convolutions may
    use TF32 (Ampere and later; as Meta's SAM 2 notebooks and label-studio-ml-backend run)."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else setting
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device
