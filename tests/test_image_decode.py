"""shared.image_decode: displayed RGB pixels, EXIF orientation, modes, bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lsfn.shared.coords import oriented_size
from lsfn.shared.image_decode import ImageError, ImageTooLarge, decode_image

BIG = 10**9


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def marked_rgb(width: int = 40, height: int = 20, color: tuple = (255, 0, 0)) -> np.ndarray:
    """Black image with a coloured block near the stored top-left corner."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[0:5, 0:8] = color
    return pixels


def test_png_round_trip() -> None:
    pixels = marked_rgb()
    decoded = decode_image(encode(Image.fromarray(pixels)), BIG)
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert (decoded.width, decoded.height, decoded.orientation, decoded.format) == (40, 20, 1, "PNG")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_label_studio_displays_it(orientation: int) -> None:
    stored = Image.fromarray(marked_rgb())
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "PNG", exif=exif), BIG)
    assert decoded.orientation == orientation
    assert (decoded.width, decoded.height) == oriented_size(40, 20, orientation)
    # Pillow's own transpose is the reference for where the marked block ends up.
    expected = np.asarray(stored.transpose(_TRANSPOSE[orientation])) if orientation > 1 else np.asarray(stored)
    np.testing.assert_array_equal(decoded.pixels, expected)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_other_modes_become_rgb(mode: str) -> None:
    source = Image.fromarray(marked_rgb(color=(255, 255, 255))).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encode(source, fmt), BIG)
    assert decoded.pixels.shape == (20, 40, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.pixels[15, 30].max() < 40  # background stays dark
    assert decoded.pixels[2, 3].min() > 200  # the white block stays white


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    gradient = (np.arange(64, dtype=np.uint16) * 1040).reshape(1, 64).repeat(4, axis=0)
    decoded = decode_image(encode(Image.fromarray(gradient)), BIG)
    row = decoded.pixels[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == round(63 * 1040 / 257)
    assert np.all(np.diff(row) >= 0) and len(set(row.tolist())) > 50  # a ramp, not all 255


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.fromarray(marked_rgb()))
    with pytest.raises(ImageTooLarge, match="800 pixels, more than the 799"):
        decode_image(data, 799)
    decode_image(data, 800)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data: a bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_bomb_header_is_refused_without_allocating() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(100_000, 100_000), 16384 * 16384)


@pytest.mark.parametrize(
    "data", [b"", b"not an image", png_header_only(10, 10), encode(Image.fromarray(marked_rgb()), "JPEG")[:200]]
)
def test_garbage_and_truncated_data_raise_image_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        decode_image(data, BIG)
