"""Canonical Huffman codes (Huffman 1952): the shortest prefix code for known symbol counts.

Code lengths come from repeatedly merging the two least frequent subtrees; every merge
adds one bit to the codes of all symbols below it, so the coded size is
Σ_s count_s · length_s = Σ over merges of the merged weight. Codes are then assigned
canonically (shorter codes first, ties by symbol), so a decoder needs only the lengths.

Lengths are limited to `limit` bits so decoding can use one lookup table of 2^limit entries:
when the longest code is too long, counts are halved (never below 1) and the code rebuilt,
which flattens the tree at the cost of a fraction of a bit per symbol on rare symbols.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from .bits import pack, windows

LIMIT = 15


def code_lengths(counts, limit: int = LIMIT) -> np.ndarray:
    """Bits per symbol (0 for symbols that never occur); a lone symbol gets 1 bit."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) > 2 ** limit:
        raise ValueError(f"{len(used)} symbols cannot have codes of at most {limit} bits")
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used].copy()
    while True:
        depth = _tree_depths(weights)
        if len(depth) == 0 or depth.max() <= limit:
            lengths[used] = depth
            return lengths
        weights = np.maximum(1, weights // 2)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    tie = itertools.count()  # equal weights merge in a fixed order: the same code on every run
    heap = [(int(w), next(tie), [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), dtype=np.int64)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        depth[a + b] += 1
        heapq.heappush(heap, (w1 + w2, next(tie), a + b))
    return depth


def canonical_codes(lengths) -> np.ndarray:
    """The canonical code of every symbol with a non-zero length (0 elsewhere)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        codes[s], previous = code, int(lengths[s])
        code += 1
    return codes


def encode(symbols, lengths) -> tuple[bytes, int]:
    """(bytes, bits) of `symbols` coded with the canonical code of `lengths`."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) and (lengths[symbols] == 0).any():
        raise ValueError("a symbol to encode has no code (count 0 when the lengths were built)")
    return pack(canonical_codes(lengths)[symbols], lengths[symbols])


def decode(data: bytes, nbits: int, count: int, lengths) -> np.ndarray:
    """`count` symbols read from a bit stream written by `encode` with the same lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    codes = canonical_codes(lengths)
    symbol_of = np.zeros(1 << width, dtype=np.int64)
    length_of = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(lengths):  # every window that starts with the code of s decodes to s
        shift = width - int(lengths[s])
        symbol_of[codes[s] << shift:(codes[s] + 1) << shift] = s
        length_of[codes[s] << shift:(codes[s] + 1) << shift] = lengths[s]
    window = windows(data, nbits, width).tolist()
    symbol_of, length_of = symbol_of.tolist(), length_of.tolist()
    out, position = [0] * count, 0
    for i in range(count):
        w = window[position]
        out[i] = symbol_of[w]
        position += length_of[w]
    if position != nbits:
        raise ValueError(f"Huffman stream has {nbits} bits but {count} symbols used {position}")
    return np.asarray(out, dtype=np.int64)
