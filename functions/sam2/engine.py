"""SAM 2 as two stateless steps: an image to its embedding, an embedding and prompts to masks.

``SAM2ImagePredictor`` keeps the current image's features on the predictor object, so two
requests sharing one predictor would mix their images. Here the embedding is a value: the
cache keeps it, any number of requests use it at once, and the model itself holds no
per-image state. The steps follow ``SAM2ImagePredictor.set_image`` and ``predict`` of sam2
1.1.0 (same transforms, same prompt encoding, masks upscaled from the decoder's low-resolution
logits the same way), with one change for speed: among multimask outputs only the best mask
is upscaled to the image's size.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lsfn.functions.sam2.spec import SIZES
from lsfn.functions.torch_device import inference
from lsfn.shared.weights import WeightsError

__all__ = ["SIZES", "Embedding", "Sam2Engine"]

# sam2's image normalisation (ImageNet mean and std) and its mask logit threshold.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_MASK_THRESHOLD = 0.0
# Prompt-encoder point labels: 1 positive, 0 negative, 2 and 3 a box's corners.
_BOX_CORNERS = (2, 3)


@dataclass(frozen=True)
class Embedding:
    """An image's features on the model's device, and the size of the image they came from."""

    image_embed: torch.Tensor
    high_res_feats: tuple[torch.Tensor, ...]
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image_embed, *self.high_res_feats))


def _import_sam2() -> Any:
    # sam2 warns at import when its optional CUDA extension (hole filling) is not built; masks
    # are unaffected and it would only alarm whoever reads the log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from sam2.build_sam import build_sam2
    return build_sam2


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same clear startup error
        raise WeightsError(f"cannot read SAM 2 checkpoint {path}: {type(exc).__name__}: {str(exc)[:300]}") from None
    state = loaded.get("model") if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"SAM 2 checkpoint {path} is not a {{'model': state_dict}} file as Meta publishes them")
    return state


class Sam2Engine:
    """A loaded SAM 2 model: ``embed`` an image once, ``segment`` it for any prompts."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.resolution = int(model.image_size)
        self._mean = torch.tensor(_MEAN, device=device).view(3, 1, 1)
        self._std = torch.tensor(_STD, device=device).view(3, 1, 1)

    @classmethod
    def load(cls, config: str, checkpoint: Path, device: str) -> Sam2Engine:
        """Build the model from a config packaged in sam2 and load the checkpoint's weights;
        a missing, corrupt or mismatched checkpoint is a WeightsError naming the problem."""
        build_sam2 = _import_sam2()
        state = _checkpoint_state(checkpoint)
        try:
            model = build_sam2(config, ckpt_path=None, device="cpu")
        except Exception as exc:  # noqa: BLE001 - hydra raises several kinds for a bad name
            known = ", ".join(c for c, _ in SIZES.values())
            raise WeightsError(f"cannot build SAM 2 from MODEL_CONFIG={config!r}: {str(exc)[:300]} (configs: {known})") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes of another model size
            raise WeightsError(
                f"SAM 2 checkpoint {checkpoint.name} does not fit MODEL_CONFIG={config!r} (another model size?): {str(exc)[:300]}"
            ) from None
        if missing or unexpected:
            raise WeightsError(
                f"SAM 2 checkpoint {checkpoint.name} does not fit MODEL_CONFIG={config!r}: "
                f"{len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        target = torch.device(device)
        return cls(model.to(target).eval(), target)

    def to(self, device: str) -> None:
        """Move the model to ``device`` (set up on the CPU, moved after a memory snapshot)."""
        target = torch.device(device)
        self.model.to(target)
        self.device = target
        self._mean, self._std = self._mean.to(target), self._std.to(target)

    def _inference(self) -> contextlib.AbstractContextManager[None]:
        # bf16 on CUDA (TF32 is switched on by the function's setup).
        return inference(self.device)

    def embed(self, pixels: np.ndarray) -> Embedding:
        """The embedding of an RGB uint8 (H, W, 3) image. The encoder always sees the image
        resized to the model's input size (1024 x 1024), whatever its own size."""
        height, width = pixels.shape[:2]
        with self._inference():
            # Resized on the device: a 4K frame crosses the bus as bytes, not as floats.
            image = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(2, 0, 1)
            image = image.float().div_(255.0)[None]
            image = F.interpolate(image, (self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True)
            image = (image[0] - self._mean) / self._std
            backbone = self.model.forward_image(image[None])
            _, feats, _, sizes = self.model._prepare_backbone_features(backbone)
            if self.model.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + self.model.no_mem_embed
            maps = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        return Embedding(image_embed=maps[-1], high_res_feats=tuple(maps[:-1]), height=height, width=width)

    def segment(
        self,
        embedding: Embedding,
        points: np.ndarray,
        positive: np.ndarray,
        boxes: np.ndarray,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks (K, H, W) bool at the image's size and their predicted IoU (K,): one mask per
        box (each with every point), or one for the points alone. With ``multimask`` the
        decoder proposes three masks per prompt and the one of highest predicted IoU is kept."""
        scale = torch.tensor([self.resolution / embedding.width, self.resolution / embedding.height], device=self.device)
        point_xy = torch.as_tensor(points, dtype=torch.float32, device=self.device).reshape(-1, 2) * scale
        point_labels = torch.as_tensor(positive, device=self.device).reshape(-1).to(torch.int32)
        prompts = max(len(boxes), 1)
        coords = point_xy[None].expand(prompts, -1, -1)
        labels = point_labels[None].expand(prompts, -1)
        if len(boxes):
            corners = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 2, 2) * scale
            corner_labels = torch.tensor(_BOX_CORNERS, dtype=torch.int32, device=self.device).expand(prompts, 2)
            coords = torch.cat([corners, coords], dim=1)  # sam2 puts box corners first
            labels = torch.cat([corner_labels, labels], dim=1)
        with self._inference():
            sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res, iou, _, _ = self.model.sam_mask_decoder(
                image_embeddings=embedding.image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=prompts > 1,
                high_res_features=list(embedding.high_res_feats),
            )
            best = iou.argmax(dim=1)
            chosen = torch.arange(prompts, device=self.device)
            logits = low_res[chosen, best][:, None].float()
            size = (embedding.height, embedding.width)
            # One mask at a time at full size: a 4K float mask is 33 MB, a few boxes' worth at once is not.
            masks = np.stack([
                (F.interpolate(logits[i : i + 1], size, mode="bilinear", align_corners=False)[0, 0] > _MASK_THRESHOLD).cpu().numpy()
                for i in range(prompts)
            ])  # fmt: skip
            scores = iou[chosen, best].float().cpu().numpy()
        return masks, scores

