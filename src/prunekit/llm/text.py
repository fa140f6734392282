"""English prose that ships with the system: the licence texts of /usr/share/common-licenses.

The split is fixed (file lists below, not a glob, so more licences on a machine change
nothing) and the parts are disjoint:

- calibration: every licence except GPL-3 and MPL-2.0, concatenated in the listed order;
  `calibration_tokens` draws random windows (32 × 256 tokens by default) from it with a seed;
- evaluation "reference": the first 2,048 tokens of GPL-3 (scored in 512-token windows);
- evaluation "long": GPL-3 followed by MPL-2.0, about 11k tokens with the SmolLM2 tokenizer;
- evaluation "devil": out-of-domain prose — the first 8,192 tokens from the preface on of
  Ambrose Bierce's Devil's Dictionary (public domain; Debian's dict-devil package, `make llm`
  installs it), to see whether a fine-tuning on the licence texts only learnt their style.

Perplexities on this text compare methods with each other; they are not comparable with
published WikiText or C4 figures.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PrunekitError

LICENCE_DIR = Path("/usr/share/common-licenses")
CALIBRATION_FILES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.2", "GFDL-1.3", "GPL-1", "GPL-2",
                     "LGPL-2", "LGPL-2.1", "LGPL-3", "MPL-1.1")
EVALUATION_FILES = {"reference": ("GPL-3",), "long": ("GPL-3", "MPL-2.0")}
REFERENCE_TOKENS = 2048
DEVIL_TEXT = Path("/usr/share/dictd/devil.dict.dz")
DEVIL_TOKENS = 8192
EVALUATION_TEXTS = tuple(EVALUATION_FILES) + ("devil",)


def read_licences(names, directory: Path = LICENCE_DIR) -> str:
    """The named licence texts joined by blank lines."""
    texts = []
    for name in names:
        path = Path(directory) / name
        if not path.is_file():
            raise PrunekitError(f"{path} is missing; it ships with Debian's base-files package "
                                "(apt-get install --reinstall base-files), or pass your own token ids.")
        texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
    return "\n\n".join(texts)


def _encode(tokenizer, text: str) -> torch.Tensor:
    # tokenizers warn about sequences longer than the model's context; the windows take care of that
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def calibration_tokens(tokenizer, samples: int = 32, length: int = 256, seed: int = 0,
                       directory: Path = LICENCE_DIR) -> torch.Tensor:
    """`samples` windows of `length` tokens at random offsets of the calibration text (samples × length)."""
    if samples < 1 or length < 1:
        raise PrunekitError(f"Need at least one calibration sample of at least one token, got {samples} × {length}.")
    stream = _encode(tokenizer, read_licences(CALIBRATION_FILES, directory))
    if stream.numel() <= length:
        raise PrunekitError(f"The calibration text has {stream.numel()} tokens, fewer than length={length}.")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - length, (samples,), generator=generator)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])


def read_devil(path: Path = DEVIL_TEXT) -> str:
    """The Devil's Dictionary from its preface on (the dictd header lines before it dropped)."""
    import gzip  # a .dict.dz file is gzip-compatible

    if not Path(path).is_file():
        raise PrunekitError(f"{path} is missing; install Debian's dict-devil package (make llm, or "
                            "apt-get install dict-devil), or choose another evaluation text.")
    text = gzip.open(path).read().decode("utf-8", errors="replace")
    start = text.find("PREFACE")
    return text[start if start >= 0 else 0:]


def evaluation_tokens(tokenizer, which: str = "reference", directory: Path = LICENCE_DIR) -> torch.Tensor:
    """The held-out token stream: 'reference' (first 2,048 tokens of GPL-3), 'long' (GPL-3 + MPL-2.0)
    or 'devil' (8,192 tokens of out-of-domain prose)."""
    if which not in EVALUATION_TEXTS:
        raise PrunekitError(f"Unknown evaluation text {which!r}; choose one of {', '.join(EVALUATION_TEXTS)}.")
    if which == "devil":
        return _encode(tokenizer, read_devil())[:DEVIL_TOKENS]
    stream = _encode(tokenizer, read_licences(EVALUATION_FILES[which], directory))
    return stream[:REFERENCE_TOKENS] if which == "reference" else stream
