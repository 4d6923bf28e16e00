"""shared.rle against label-studio-sdk's brush encoder and decoder (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush as sdk

from lsfn.shared.rle import RLEError, decode_rle, mask_to_rle, rle_to_mask

KINDS = ("empty", "full", "pixel", "noise", "sparse", "rects", "stripes")
DTYPES = ("bool", "uint8_255", "uint8_any", "int64", "float32")


def make_mask(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one of the shapes that stress different run lengths."""
    mask = np.zeros((height, width), bool)
    if kind == "full":
        mask[:] = True
    elif kind == "pixel":
        mask[rng.integers(height), rng.integers(width)] = True
    elif kind == "noise":
        mask = rng.random((height, width)) < rng.uniform(0.1, 0.9)
    elif kind == "sparse":
        mask = rng.random((height, width)) < 0.01
    elif kind == "rects":
        for _ in range(rng.integers(1, 5)):
            y0, x0 = rng.integers(height), rng.integers(width)
            y1, x1 = rng.integers(y0, height + 1), rng.integers(x0, width + 1)
            mask[y0:y1, x0:x1] = ~mask[y0:y1, x0:x1]
    elif kind == "stripes":
        period = int(rng.integers(1, 70))
        mask[:, :] = (np.arange(width) // period % 2 == 0)[None, :]
    return mask


def as_dtype(mask: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return mask
    if dtype == "uint8_255":
        return mask.astype(np.uint8) * 255
    if dtype == "uint8_any":  # any nonzero value means inside
        return (mask * rng.integers(1, 256, mask.shape)).astype(np.uint8)
    if dtype == "int64":
        return mask.astype(np.int64) * rng.integers(1, 1000)
    return mask.astype(np.float32) * 0.5


def sdk_rle(mask: np.ndarray) -> list[int]:
    return sdk.mask2rle(((np.asarray(mask) != 0) * 255).astype(np.uint8))


def sdk_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    return sdk.decode_rle(rle).reshape(height, width, 4)[:, :, 3]


@st.composite
def masks(draw: st.DrawFn, max_side: int = 90) -> np.ndarray:
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = make_mask(draw(st.sampled_from(KINDS)), height, width, rng)
    return as_dtype(mask, draw(st.sampled_from(DTYPES)), rng)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks())
def test_encoding_equals_sdk_and_round_trips(mask: np.ndarray) -> None:
    ours = mask_to_rle(mask)
    assert ours == sdk_rle(mask)
    height, width = mask.shape
    expected = (mask != 0).astype(np.uint8) * 255
    np.testing.assert_array_equal(rle_to_mask(ours, height, width), expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(max_side=700))
def test_large_masks_with_long_runs_equal_sdk(mask: np.ndarray) -> None:
    ours = mask_to_rle(mask)
    assert ours == sdk_rle(mask)
    np.testing.assert_array_equal(sdk_mask(ours, *mask.shape), (mask != 0) * 255)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 2), (2, 1), (1, 1000), (1000, 1), (1, 70_000), (70_000, 1), (3, 7), (257, 129)],
)
@pytest.mark.parametrize("kind", KINDS)
def test_edge_shapes(shape: tuple[int, int], kind: str) -> None:
    mask = make_mask(kind, *shape, np.random.default_rng(sum(shape)))
    ours = mask_to_rle(mask)
    assert ours == sdk_rle(mask)
    np.testing.assert_array_equal(rle_to_mask(ours, *shape), mask * 255)


def test_runs_longer_than_65536_values_are_split_like_the_sdk() -> None:
    # 16,384 pixels = 65,536 RGBA values: the boundary, one over it, and many times over it.
    for pixels in (16_383, 16_384, 16_385, 32_768, 32_769, 500_000):
        mask = np.ones((1, pixels), np.uint8)
        assert mask_to_rle(mask) == sdk_rle(mask), pixels
        mask[0, pixels // 2] = 0
        assert mask_to_rle(mask) == sdk_rle(mask), pixels


def test_full_hd_shapes_and_noise_equal_sdk() -> None:
    rng = np.random.default_rng(7)
    shapes = make_mask("rects", 1080, 1920, rng)
    noise = rng.random((1080, 1920)) < 0.5
    for mask in (shapes, noise):
        ours = mask_to_rle(mask)
        assert ours == sdk_rle(mask)
        np.testing.assert_array_equal(rle_to_mask(ours, 1080, 1920), mask * 255)


def test_non_contiguous_views_encode_their_own_pixels() -> None:
    base = make_mask("noise", 60, 80, np.random.default_rng(3))
    for view in (base.T, base[::2, 1::3], base[:, ::-1]):
        assert mask_to_rle(view) == sdk_rle(np.ascontiguousarray(view))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
    st.sampled_from(("random", "alpha_only", "few_values")),
)
def test_decodes_sdk_streams_with_literal_blocks(height: int, width: int, seed: int, kind: str) -> None:
    """RGBA arrays whose channels differ give single-value literal blocks, as frontend masks
    painted with anti-aliased edges do; the alpha channel is the mask."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        rgba = rng.integers(0, 256, (height, width, 4))
    elif kind == "alpha_only":
        rgba = np.zeros((height, width, 4), np.int64)
        rgba[..., 3] = rng.integers(0, 256, (height, width))
    else:
        rgba = rng.choice([0, 1, 255], (height, width, 4))
    stream = sdk.encode_rle(rgba.ravel())
    np.testing.assert_array_equal(rle_to_mask(stream, height, width), rgba[..., 3])
    np.testing.assert_array_equal(decode_rle(stream), sdk.decode_rle(stream))


class BitWriter:
    """Writes rle-pack streams with any block layout, as the frontend's encoder may."""

    def __init__(self) -> None:
        self.bits = ""

    def put(self, value: int, width: int) -> None:
        self.bits += format(value, f"0{width}b")

    def stream(self) -> list[int]:
        bits = self.bits + "0" * (-len(self.bits) % 8)
        return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decodes_multi_word_literals_and_custom_sizes() -> None:
    # Header: 2x2 RGBA = 16 values, word size 8, run-length field sizes (2, 5, 9, 16).
    writer = BitWriter()
    writer.put(16, 32)
    writer.put(7, 5)
    for size in (2, 5, 9, 16):
        writer.put(size - 1, 4)
    values: list[int] = []
    # A literal block of 6 words using the 5-bit size field.
    literal = [1, 2, 3, 200, 0, 9]
    writer.put(0, 1), writer.put(1, 2), writer.put(len(literal) - 1, 5)
    for word in literal:
        writer.put(word, 8)
    values += literal
    # A repeat block of 10 x 77 using the 9-bit size field.
    writer.put(1, 1), writer.put(2, 2), writer.put(9, 9), writer.put(77, 8)
    values += [77] * 10
    stream = writer.stream()
    np.testing.assert_array_equal(decode_rle(stream), values)
    np.testing.assert_array_equal(decode_rle(stream), sdk.decode_rle(stream))
    np.testing.assert_array_equal(rle_to_mask(stream, 2, 2), np.array(values).reshape(2, 2, 4)[..., 3])


def test_empty_area_mask_encodes_a_header_only_stream() -> None:
    rle = mask_to_rle(np.zeros((0, 5), bool))
    assert decode_rle(rle).size == 0
    assert rle_to_mask(rle, 0, 5).shape == (0, 5)


def test_rejects_non_2d_masks() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2)))


def test_wrong_size_is_refused_before_decoding() -> None:
    rle = mask_to_rle(np.ones((10, 10), bool))
    with pytest.raises(RLEError, match="expected"):
        rle_to_mask(rle, 10, 11)


def gigabyte_stream(word_size: int = 8) -> list[int]:
    """A few hundred bytes announcing 4 G values, made of 65,536-value repeat blocks."""
    writer = BitWriter()
    writer.put(2**32 - 4, 32), writer.put(word_size - 1, 5)
    for size in (3, 4, 8, 16):
        writer.put(size - 1, 4)
    for _ in range(100):
        writer.put(1, 1), writer.put(3, 2), writer.put(2**16 - 1, 16), writer.put(255, word_size)
    return writer.stream()


def test_a_tiny_stream_announcing_gigabytes_is_refused_before_expanding() -> None:
    with pytest.raises(RLEError, match="expected 40000"):
        rle_to_mask(gigabyte_stream(), 100, 100)
    with pytest.raises(RLEError, match="more than the"):
        decode_rle(gigabyte_stream(word_size=32))
    with pytest.raises(RLEError, match="more than the"):
        rle_to_mask(gigabyte_stream(), 32768, 32767)


def test_only_8_bit_words_make_a_brush_mask() -> None:
    writer = BitWriter()
    writer.put(4, 32), writer.put(15, 5)
    for size in (3, 4, 8, 16):
        writer.put(size - 1, 4)
    writer.put(1, 1), writer.put(0, 2), writer.put(3, 3), writer.put(0x1234, 16)
    np.testing.assert_array_equal(decode_rle(writer.stream()), [0x1234] * 4)
    with pytest.raises(RLEError, match="8-bit"):
        rle_to_mask(writer.stream(), 1, 1)


@pytest.mark.parametrize("size", [(2.0, 2.0), ("2", "2"), (None, 2), (True, 4), (-1, 4)])
def test_mask_size_must_be_non_negative_integers(size: tuple) -> None:
    with pytest.raises(RLEError, match="mask size"):
        rle_to_mask(mask_to_rle(np.ones((2, 2), bool)), *size)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [1, 2, 3],
        [256, 0, 0, 0, 0, 0, 0, 0],
        [-1] * 8,
        ["x"] * 8,
        [1.5] * 8,
        [[0] * 8],
        [[0, 1], [2]],
        np.array([300] * 8),
        None,
        {"a": 1},
    ],
)
def test_malformed_streams_raise_rle_error(bad: object) -> None:
    with pytest.raises(RLEError):
        decode_rle(bad)


def test_truncated_stream_raises() -> None:
    rle = mask_to_rle(make_mask("noise", 30, 30, np.random.default_rng(1)))
    with pytest.raises(RLEError, match="truncated"):
        rle_to_mask(rle[: len(rle) // 2], 30, 30)
