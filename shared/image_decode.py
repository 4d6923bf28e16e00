"""Image bytes to the RGB pixels Label Studio's coordinates refer to.

Label Studio displays an image after applying its EXIF orientation, and every percentage in a
region refers to that displayed image, so decoding applies the orientation first. Grayscale,
palette, alpha, CMYK and 16-bit images become 8-bit RGB. The pixel count is checked from the
header, before any pixel is decoded, so a small file that inflates to gigabytes (a
decompression bomb) is refused without the memory being spent.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DecodedImage", "ImageError", "ImageTooLarge", "decode_image"]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageError(ValueError):
    """The bytes are not an image we can decode; the runtime answers 422."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed; the runtime answers 413."""


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels (height, width, 3) uint8 as displayed, with the stored size and orientation."""

    pixels: np.ndarray
    orientation: int
    format: str | None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    gray = np.clip(gray, 0, 255).round().astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("RGB") clips 16-bit values at 255; scale the full range instead.
        return _gray_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if image.mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(gray * (255.0 if gray.max(initial=0) <= 1.0 else 1.0))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode image bytes to displayed RGB pixels, refusing more than ``max_pixels``."""
    # Our own limit decides; Pillow's bomb warning would only add noise (its error still counts).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _decode(data, max_pixels)
        except Image.DecompressionBombError as exc:
            # Pillow refuses on its own beyond twice its limit, before our check can run.
            raise ImageTooLarge(f"{exc} (MAX_IMAGE_PIXELS is {max_pixels})") from None


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("the data is not an image format we can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's parsers raise all three
        raise ImageError(f"the image header cannot be read: {exc}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, more than the "
                f"{max_pixels} allowed (MAX_IMAGE_PIXELS)"
            )
        if width <= 0 or height <= 0:
            raise ImageError(f"the image has no pixels ({width}x{height})")
        try:
            orientation = int(image.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not sink the image
            orientation = 1
        try:
            image.load()
            pixels = _to_rgb(ImageOps.exif_transpose(image) or image)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"the image data cannot be decoded: {exc}") from None
        return DecodedImage(pixels=np.ascontiguousarray(pixels), orientation=orientation, format=image.format)
