"""Bit streams: integers of given widths packed most-significant bit first, and back."""

from __future__ import annotations

import numpy as np


def pack(values, widths) -> tuple[bytes, int]:
    """(bytes, number of bits) of `values` written with `widths` bits each (an int or one width per value)."""
    values = np.asarray(values, dtype=np.int64)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), values.shape)
    total = int(widths.sum())
    if total == 0:
        return b"", 0
    ends = np.cumsum(widths)
    starts = ends - widths
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(widths.max())):  # bit j of every value, counted from its most significant bit
        has = widths > j
        bits[starts[has] + j] = (values[has] >> (widths[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), total


def bit_array(data: bytes, nbits: int) -> np.ndarray:
    """The first `nbits` bits of `data` as a uint8 array of 0 / 1."""
    if len(data) * 8 < nbits:
        raise ValueError(f"bit stream holds {len(data) * 8} bits, {nbits} expected")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:nbits]


def unpack_fixed(data: bytes, count: int, width: int) -> np.ndarray:
    """`count` integers of `width` bits each (inverse of pack with a constant width)."""
    bits = bit_array(data, count * width).reshape(count, width).astype(np.int64)
    return bits @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64)) if width else np.zeros(count, np.int64)


def windows(data: bytes, nbits: int, width: int) -> np.ndarray:
    """For every bit position p < nbits: the `width` bits starting at p as an integer (zeros past the end)."""
    bits = np.concatenate([bit_array(data, nbits), np.zeros(width, dtype=np.uint8)]).astype(np.int32)
    out = np.zeros(nbits, dtype=np.int32)
    for j in range(width):
        out = (out << 1) | bits[j:j + nbits]
    return out
