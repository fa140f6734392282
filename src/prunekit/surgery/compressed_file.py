"""The Deep Compression file: sparse positions as Huffman-coded gaps, values as Huffman-coded
indices into a per-tensor codebook (Han et al. 2016; the relative indexing of EIE).

Layout (format "prunekit.deep_compression/1"):

    b"PKDC" · uint32 n (little endian) · n bytes of zlib-compressed JSON header · payload

The header lists every state_dict entry: name, dtype, shape, encoding and the byte length of
each part it owns in the payload (parts follow one another in header order). Encodings:

  raw     the tensor's bytes.
  sparse  the flattened tensor as entries (gap, value). gap = zeros skipped before the entry,
          at most 2^g − 1; a longer run of zeros is bridged by filler entries (gap 2^g − 1,
          value 0), each covering 2^g positions. Decoding: position_j = Σ_{i≤j} (gap_i + 1) − 1.
          values "shared": an index into the codebook (symbol k = filler), the codebook's k
          values stored raw; values "raw": the values themselves (fillers store 0).
          coding "huffman": gaps and indices as canonical Huffman streams, each preceded by
          its code lengths (4 bits per symbol); coding "fixed": g bits per gap and
          ⌈log2(k + 1)⌉ bits per index.

Per tensor the writer tries every gap width g ≤ 12 and both value kinds (shared only when
the tensor has ≤ 2^max_bits distinct non-zero values) and keeps the smallest encoding, or raw
when nothing is smaller. Reading returns the very same tensors (bitwise).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PrunekitError
from ..files import replacing
from ..masks import get_masks
from . import huffman
from .bits import pack, unpack_fixed

FORMAT = "prunekit.deep_compression/1"
MAGIC = b"PKDC"
CODINGS = ("huffman", "fixed")
GAP_BITS = range(1, 13)
LENGTH_BITS = 4  # code lengths ≤ huffman.LIMIT = 15


# ----------------------------------------------------------------------------------------
# Tensor ⇄ bytes
# ----------------------------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_bytes(data: bytes, dtype: str, shape) -> torch.Tensor:
    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype):
        raise PrunekitError(f"Unknown dtype {dtype!r} in the file.")
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt) if data else torch.zeros(0, dtype=dt)
    return flat.reshape(shape).clone()


# ----------------------------------------------------------------------------------------
# Relative indexing
# ----------------------------------------------------------------------------------------

def relative_entries(positions: np.ndarray, symbols: np.ndarray, gap_bits: int, filler: int):
    """(gaps, symbols) with fillers inserted where a run of zeros exceeds 2^gap_bits − 1."""
    span = 1 << gap_bits  # positions one filler covers: 2^g − 1 zeros skipped, then itself
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // span
    counts = fillers + 1
    last = np.cumsum(counts) - 1
    out_gaps = np.full(int(counts.sum()), span - 1, dtype=np.int64)
    out_symbols = np.full(len(out_gaps), filler, dtype=np.int64)
    out_gaps[last] = gaps - fillers * span
    out_symbols[last] = symbols
    return out_gaps, out_symbols


def positions_of(gaps: np.ndarray) -> np.ndarray:
    return np.cumsum(gaps + 1) - 1


# ----------------------------------------------------------------------------------------
# Encoding one tensor
# ----------------------------------------------------------------------------------------

@dataclass
class Encoded:
    """One tensor's header entry and payload parts."""

    header: dict
    parts: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts)


def _stream(symbols: np.ndarray, alphabet: int, coding: str) -> tuple[dict, list[bytes]]:
    """(header fields, parts) of one symbol stream."""
    if coding == "fixed":
        width = max(1, math.ceil(math.log2(alphabet)))
        data, nbits = pack(symbols, width)
        return {"width": width, "nbits": nbits}, [data]
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    table, _ = pack(lengths, LENGTH_BITS)
    data, nbits = huffman.encode(symbols, lengths)
    return {"alphabet": alphabet, "nbits": nbits}, [table, data]


def _stream_bits(symbols: np.ndarray, alphabet: int, coding: str) -> int:
    """Bits `_stream` would write (without building it), tables included."""
    if coding == "fixed":
        return len(symbols) * max(1, math.ceil(math.log2(alphabet)))
    counts = np.bincount(symbols, minlength=alphabet)
    table = 8 * math.ceil(alphabet * LENGTH_BITS / 8)
    return int((counts * huffman.code_lengths(counts)).sum()) + table + 7  # + padding to whole bytes


def _sparse_candidates(flat: torch.Tensor, coding: str, share: bool, max_bits: int, gap_bits):
    """Yield (estimated bits, kind, gap width, codebook, symbols, positions) for every sparse encoding tried."""
    positions = torch.nonzero(flat).reshape(-1).numpy()
    values = flat[positions]
    kinds = ["raw"]
    if share:
        codebook, symbols = torch.unique(values, return_inverse=True)
        if 0 < len(codebook) <= 2 ** max_bits:
            kinds.append("shared")
    element = flat.element_size() * 8
    for g in ([gap_bits] if gap_bits is not None else GAP_BITS):
        gaps, _ = relative_entries(positions, np.zeros(len(positions), dtype=np.int64), g, 0)
        for kind in kinds:
            bits = _stream_bits(gaps, 1 << g, coding)
            if kind == "raw":
                bits += len(gaps) * element
                yield bits, kind, g, None, None, positions
            else:
                k = len(codebook)
                _, entry_symbols = relative_entries(positions, symbols.numpy(), g, k)
                bits += _stream_bits(entry_symbols, k + 1, coding) + k * element
                yield bits, kind, g, codebook, symbols.numpy(), positions


def encode_tensor(name: str, tensor: torch.Tensor, coding: str = "huffman", *, share: bool = True,
                  max_bits: int = 8, gap_bits: int | None = None) -> Encoded:
    """The smallest encoding of `tensor` this format offers (see the module docstring)."""
    t = tensor.detach().cpu()
    header = {"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
    raw = Encoded({**header, "encoding": "raw"}, [_to_bytes(t)])
    if not t.is_floating_point() or t.numel() == 0 or not torch.count_nonzero(t):
        return raw
    flat = t.reshape(-1)
    best = min(_sparse_candidates(flat, coding, share, max_bits, gap_bits), key=lambda c: c[0])
    _, kind, g, codebook, symbols, positions = best
    if best[0] >= 8 * raw.nbytes:
        return raw
    fields = {**header, "encoding": "sparse", "coding": coding, "gap_bits": g, "values": kind}
    if kind == "raw":  # entry j holds value number symbol_j; fillers point past the end, at a 0
        gaps, which = relative_entries(positions, np.arange(len(positions)), g, len(positions))
        entry_values = torch.cat([flat[torch.from_numpy(positions)], flat.new_zeros(1)])[torch.from_numpy(which)]
        gap_fields, gap_parts = _stream(gaps, 1 << g, coding)
        return Encoded({**fields, "entries": len(gaps), "gaps": gap_fields},
                       gap_parts + [_to_bytes(entry_values)])
    k = len(codebook)
    gaps, entry_symbols = relative_entries(positions, symbols, g, k)
    gap_fields, gap_parts = _stream(gaps, 1 << g, coding)
    index_fields, index_parts = _stream(entry_symbols, k + 1, coding)
    return Encoded({**fields, "entries": len(gaps), "k": k, "gaps": gap_fields, "index": index_fields},
                   [_to_bytes(codebook)] + gap_parts + index_parts)


# ----------------------------------------------------------------------------------------
# Decoding one tensor
# ----------------------------------------------------------------------------------------

class _Reader:
    """Hands out the payload parts of one tensor in order."""

    def __init__(self, payload: bytes, offset: int, sizes: list[int]):
        self.payload, self.offset, self.sizes = payload, offset, list(sizes)

    def next(self) -> bytes:
        size = self.sizes.pop(0)
        part = self.payload[self.offset:self.offset + size]
        if len(part) != size:
            raise PrunekitError("The file is truncated: a tensor's data ends past the end of the file.")
        self.offset += size
        return part


def _read_stream(reader: _Reader, fields: dict, count: int, coding: str) -> np.ndarray:
    if coding == "fixed":
        return unpack_fixed(reader.next(), count, fields["width"])
    lengths = unpack_fixed(reader.next(), fields["alphabet"], LENGTH_BITS)
    return huffman.decode(reader.next(), fields["nbits"], count, lengths)


def decode_tensor(header: dict, reader: _Reader) -> torch.Tensor:
    if header["encoding"] == "raw":
        return _from_bytes(reader.next(), header["dtype"], header["shape"])
    numel, dtype = math.prod(header["shape"]), header["dtype"]
    coding, entries = header["coding"], header["entries"]
    codebook = _from_bytes(reader.next(), dtype, [-1]) if header["values"] == "shared" else None
    positions = positions_of(_read_stream(reader, header["gaps"], entries, coding))
    if codebook is None:
        values = _from_bytes(reader.next(), dtype, [-1])
    else:
        symbols = torch.from_numpy(_read_stream(reader, header["index"], entries, coding))
        values = torch.cat([codebook, codebook.new_zeros(1)])[symbols]
    if len(positions) and positions[-1] >= numel:
        raise PrunekitError(f"Tensor '{header['name']}' in the file is corrupt: entries run past its size.")
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[torch.from_numpy(positions)] = values
    return flat.reshape(header["shape"])


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------

def write_deep_compressed(model_or_state, path, *, coding: str = "huffman", share: bool = True, max_bits: int = 8,
                          extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write a model's state_dict (or a state_dict) in the Deep Compression format.

    Returns {"path", "bytes" (the file's size on disk), "tensors": one row per tensor with
    its encoding and bytes}. `coding="fixed"` and `share=False` write the earlier stages of
    the pipeline (no Huffman coding; no weight sharing) for comparison. Masks must be baked
    first (deep_compress returns a plain model). Existing files are replaced only with
    overwrite=True; the write is atomic.
    """
    if coding not in CODINGS:
        raise PrunekitError(f"coding must be one of {CODINGS}, not {coding!r}.")
    if not (isinstance(max_bits, int) and 1 <= max_bits <= 12):
        raise PrunekitError(f"max_bits must be an integer in [1, 12], not {max_bits!r}.")
    path = Path(path)
    if path.exists() and not overwrite:
        raise PrunekitError(f"{path} exists; pass overwrite=True to replace it or choose another path.")
    if isinstance(model_or_state, nn.Module):
        if len(get_masks(model_or_state)):
            raise PrunekitError("The model carries masks; bake them first (prunekit.remove_masks on a copy, or "
                                "deep_compress which returns a plain model).")
        state = model_or_state.state_dict()
    else:
        state = dict(model_or_state)
    encoded = [encode_tensor(n, t, coding, share=share, max_bits=max_bits) for n, t in state.items()]
    headers = [{**e.header, "parts": [len(p) for p in e.parts]} for e in encoded]
    try:
        text = json.dumps({"format": FORMAT, "tensors": headers, "extra": extra or {}}, separators=(",", ":"))
    except TypeError as e:
        raise PrunekitError(f"extra must be JSON-serialisable ({e}).") from None
    header = zlib.compress(text.encode(), 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        for e in encoded:
            for part in e.parts:
                f.write(part)
    rows = [{"name": e.header["name"], "shape": "×".join(map(str, e.header["shape"])),
             "encoding": e.header["encoding"] + (f"/{e.header['values']}/g{e.header['gap_bits']}"
                                                 if e.header["encoding"] == "sparse" else ""),
             "bytes": e.nbytes} for e in encoded]
    return {"path": str(path), "bytes": path.stat().st_size, "header_bytes": 8 + len(header), "tensors": rows}


def _read_header(path) -> tuple[dict, bytes, int]:
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"Deep Compression file {path} does not exist.")
    data = path.read_bytes()
    if data[:4] != MAGIC or len(data) < 8:
        raise PrunekitError(f"{path} is not a prunekit Deep Compression file ({FORMAT}).")
    (n,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(zlib.decompress(data[8:8 + n]))
    except (zlib.error, ValueError):
        raise PrunekitError(f"{path} has a corrupt header.") from None
    if header.get("format") != FORMAT:
        raise PrunekitError(f"{path} is format {header.get('format')!r}, not {FORMAT}.")
    return header, data, 8 + n


def read_deep_compressed(path) -> dict[str, torch.Tensor]:
    """The state_dict stored at `path`, bitwise equal to what was written (load it with
    model.load_state_dict). No code is read from the file."""
    header, data, offset = _read_header(path)
    state = {}
    for entry in header["tensors"]:
        reader = _Reader(data, offset, entry["parts"])
        try:
            state[entry["name"]] = decode_tensor(entry, reader)
        except (KeyError, ValueError, RuntimeError) as e:
            raise PrunekitError(f"Tensor '{entry.get('name')}' in {path} cannot be decoded ({e}).") from None
        offset = reader.offset
    return state


def deep_compressed_extra(path) -> dict:
    """The `extra` dict stored with a Deep Compression file."""
    return _read_header(path)[0].get("extra", {})
