"""Label Studio's brush RLE, vectorised.

Label Studio stores a brush mask as the RGBA pixels of the mask (each pixel repeated in 4 channels)
compressed with thi.ng's ``rle-pack`` bit stream:

    header: 32 bits value count, 5 bits (word size - 1), 4 x 4 bits (run-length field sizes - 1)
    block:  1 bit  repeat flag
            2 bits index into the run-length field sizes
            n bits (count - 1)
            repeat: one word, repeated count times | literal: count words

``label_studio_sdk.converter.brush`` builds this stream as a Python string of '0'/'1' characters,
which costs seconds on a noisy full-HD mask. This module produces the identical byte list with
NumPy: runs are found with one comparison over the mask, every block becomes one integer code,
and the codes are laid into bytes at their bit offsets in one pass. The SDK's encoder is the
reference; tests compare the two byte for byte.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_rle", "rle_to_mask", "decode_rle", "RLEError", "MAX_VALUES"]

_WORD_SIZE = 8
_RUN_FIELD_SIZES = (3, 4, 8, 16)  # the SDK's and the frontend's default sizes
_CHANNELS = 4
_MAX_RUN = 1 << 16  # a 16-bit count field holds at most 65,536

# Largest stream decoded: 4 values per pixel of a 16384 x 16384 mask. A few kilobytes of RLE can
# announce gigabytes, so anything larger is refused before it is expanded.
MAX_VALUES = 4 * 16384 * 16384

# Header as the SDK writes it: value count (filled in per mask), word size 8, field sizes 3/4/8/16.
_HEADER_TAIL = (_WORD_SIZE - 1, [size - 1 for size in _RUN_FIELD_SIZES])
_HEADER_BITS = 32 + 5 + 4 * 4


class RLEError(ValueError):
    """The RLE stream is malformed or does not match the requested mask size."""


def _header_value(count: int) -> int:
    word_minus_one, sizes_minus_one = _HEADER_TAIL
    value = (count << 5) | word_minus_one
    for size in sizes_minus_one:
        value = (value << 4) | size
    return value


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode a 2-D mask (nonzero = inside) as Label Studio brush RLE.

    The result equals ``label_studio_sdk.converter.brush.mask2rle(mask as uint8 0/255)``
    element for element.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.reshape(-1)
    if flat.dtype != np.bool_:
        flat = flat != 0
    pixels = flat.size
    if pixels * _CHANNELS >= 1 << 32:
        raise ValueError(f"mask of {pixels} pixels is too large for brush RLE (32-bit count)")

    if not pixels:
        return _pack(_header_value(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    # Run boundaries in pixel space; every run is 4x longer in the RGBA stream.
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [pixels]))
    lengths = np.diff(bounds) * _CHANNELS
    values = flat[bounds[:-1]]

    # Runs longer than 65,536 values are split into full 65,536 chunks plus a remainder,
    # exactly as the SDK does (``while length > 2**16``); like the SDK, the remainder keeps
    # the 16-bit count field whatever its size.
    chunks = (lengths - 1) // _MAX_RUN
    split = None
    if chunks.any():
        repeats = chunks + 1
        values = np.repeat(values, repeats)
        remainder = lengths - chunks * _MAX_RUN
        lengths = np.full(values.size, _MAX_RUN, np.int64)
        lengths[np.cumsum(repeats) - 1] = remainder
        split = np.repeat(chunks > 0, repeats)

    codes, widths = _repeat_codes(lengths, values, split)
    return _pack(_header_value(pixels * _CHANNELS), codes, widths)


def _repeat_codes(
    lengths: np.ndarray, values: np.ndarray, split: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One integer code and its width in bits per repeat block: flag 1, size index, count - 1,
    then the word (0 or 255). Lengths are multiples of 4 here, so no literal blocks occur.
    Blocks marked in ``split`` (pieces of a long run) always use the 16-bit count field."""
    index = (lengths > 8).astype(np.int64) + (lengths > 16) + (lengths > 256)
    if split is not None:
        index[split] = 3
    field = np.array(_RUN_FIELD_SIZES, np.int64)[index]
    codes = (((4 | index) << field | (lengths - 1)) << _WORD_SIZE) | (values * 255)
    return codes, field + 3 + _WORD_SIZE


def _pack(header: int, codes: np.ndarray, widths: np.ndarray) -> list[int]:
    """Concatenate the 53 header bits and the variable-width codes into bytes, MSB first.

    Each code (at most 27 bits) touches at most two big-endian 32-bit words of the output.
    Codes never share bits, so adding their contributions to a word equals OR-ing them, and one
    ``bincount`` per half does it for every code at once (sums stay below 2**32: exact in float64).
    The SDK always appends 1 to 8 zero bits (``8 - len % 8``), so the byte count is
    ``total_bits // 8 + 1``; that quirk is kept so the lists are identical.
    """
    ends = np.cumsum(widths) + _HEADER_BITS
    total_bits = int(ends[-1]) if ends.size else _HEADER_BITS
    nbytes = total_bits // 8 + 1
    nwords = nbytes // 4 + 2
    words = np.zeros(nwords, np.uint32)
    if codes.size:
        starts = ends - widths
        word_index = starts >> 5
        aligned = codes.astype(np.uint64) << (64 - (starts & 31) - widths).astype(np.uint64)
        high = (aligned >> np.uint64(32)).astype(np.float64)
        low = (aligned & np.uint64(0xFFFFFFFF)).astype(np.float64)
        acc = np.bincount(word_index, weights=high, minlength=nwords)
        acc[1:] += np.bincount(word_index, weights=low, minlength=nwords)[:-1]
        words = acc.astype(np.uint32)
    head = header << (64 - _HEADER_BITS)
    words[0] |= np.uint32(head >> 32)
    words[1] |= np.uint32(head & 0xFFFFFFFF)
    return words.astype(">u4").view(np.uint8)[:nbytes].tolist()


def decode_rle(
    rle: list[int] | bytes | np.ndarray,
    expected: int | None = None,
    max_values: int = MAX_VALUES,
    max_word_size: int = 32,
) -> np.ndarray:
    """Decode an RLE stream to its flat array of words (RGBA values for a brush mask).

    Handles every block kind the format allows (repeats and literals, any field and word
    sizes), so RLE written by Label Studio's frontend decodes too. The stream is a chain of
    variable-width blocks, so it is walked block by block in Python, collecting (value, count)
    pairs; the expansion into the output array is one ``np.repeat``. With ``expected``, a
    header announcing any other value count is refused before anything is expanded (a few
    bytes of RLE can announce gigabytes); a stream announcing more than ``max_values`` values
    is refused in any case, as is one with words wider than ``max_word_size`` bits.
    """
    data = _stream_bytes(rle)
    total_bits = len(data) * 8
    if total_bits < _HEADER_BITS:
        raise RLEError("RLE stream is shorter than its header")
    head = int.from_bytes(data[:7], "big") >> (56 - _HEADER_BITS)
    sizes = [((head >> (12 - 4 * k)) & 0xF) + 1 for k in range(4)]
    field_masks = [(1 << size) - 1 for size in sizes]
    word_size = ((head >> 16) & 0x1F) + 1
    if word_size > max_word_size:
        raise RLEError(f"RLE uses {word_size}-bit words, wider than {max_word_size}-bit")
    word_mask = (1 << word_size) - 1
    count = head >> 21
    if expected is not None and count != expected:
        raise RLEError(f"RLE holds {count} values, expected {expected}")
    if count > max_values:
        raise RLEError(f"RLE announces {count} values, more than the {max_values} allowed")

    padded = data + bytes(8)  # an 8-byte window can be read at any byte of the stream
    from_bytes = int.from_bytes
    values: list[int] = []
    counts: list[int] = []
    pos = _HEADER_BITS
    i = 0
    while i < count:
        byte = pos >> 3
        window = from_bytes(padded[byte : byte + 8], "big")
        left = 64 - (pos & 7)  # unread bits in the window
        kind = (window >> (left - 3)) & 7  # repeat flag and size index
        field = sizes[kind & 3]
        left -= 3 + field
        n = ((window >> left) & field_masks[kind & 3]) + 1
        pos += 3 + field
        i += n
        if kind & 4:
            if left < word_size:
                window = from_bytes(padded[pos >> 3 : (pos >> 3) + 8], "big")
                left = 64 - (pos & 7)
            values.append((window >> (left - word_size)) & word_mask)
            counts.append(n)
            pos += word_size
        else:
            for _ in range(n):
                window = from_bytes(padded[pos >> 3 : (pos >> 3) + 8], "big")
                values.append((window >> (64 - (pos & 7) - word_size)) & word_mask)
                pos += word_size
            counts.extend([1] * n)
        if pos > total_bits:
            raise RLEError(f"RLE stream is truncated after {min(i, count)} of {count} values")
    dtype = np.uint8 if word_size <= 8 else np.uint16 if word_size <= 16 else np.uint32
    # A last run past the announced count is cut, as the SDK and the frontend decoders do.
    return np.repeat(np.array(values, dtype), counts)[:count]


def _stream_bytes(rle: list[int] | bytes | np.ndarray) -> bytes:
    """The RLE as bytes; anything but a flat sequence of integers 0-255 is an RLEError
    (NumPy would otherwise wrap 300 to 44 or truncate 1.5 to 1 without a word)."""
    if isinstance(rle, bytes):
        return rle
    try:
        array = np.asarray(rle)
    except (TypeError, ValueError) as exc:
        raise RLEError(f"RLE must be a list of integers 0-255: {exc}") from None
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise RLEError("RLE must be a flat list of integers 0-255")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise RLEError("RLE values must be integers 0-255")
    return array.astype(np.uint8).tobytes()


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE to a ``(height, width)`` uint8 mask.

    The mask is the alpha channel of the decoded RGBA image, as Label Studio and the SDK read it:
    0 outside, 255 inside for masks written by ``mask_to_rle`` or the SDK, and the brush's alpha
    for masks painted in the frontend.
    """
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (height, width)):
        raise RLEError(f"mask size must be integers, got {height!r}x{width!r}")
    if height < 0 or width < 0:
        raise RLEError(f"mask size must not be negative, got {height}x{width}")
    if height * width * _CHANNELS > MAX_VALUES:
        raise RLEError(f"a {height}x{width} mask is more than the {MAX_VALUES // 4} pixels allowed")
    flat = decode_rle(rle, expected=height * width * _CHANNELS, max_word_size=_WORD_SIZE)
    return flat.reshape(height, width, _CHANNELS)[:, :, 3].astype(np.uint8, copy=True)
