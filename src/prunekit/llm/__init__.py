"""One-shot pruning of pretrained causal language models with a little calibration text.

    from prunekit.llm import load_causal_lm, calibration_tokens, evaluation_tokens, prune_oneshot, evaluate_lm
    model, tokenizer = load_causal_lm("smollm2")            # needs the [llm] extra
    result = prune_oneshot(model, calibration_tokens(tokenizer), "sparsegpt", sparsity=0.5)
    prune_structure(model, calibration_tokens(tokenizer), "heads", 1 / 3)  # heads / ffn / layers, compacted

Importing this package needs only torch; transformers is imported when a model is loaded.
"""

from .base import LayerMethod, LayerPruning
from .encoders import (calibration_sentences, distill, embedding_cosine, evaluation_sentences, load_sentence_encoder,
                       sentence_batches, sentence_embeddings)
from .engine import BlockRun, block_linears, decoder_layers, run_blockwise
from .evaluate import LMEvaluation, evaluate_lm
from .hf_config import sync_config
from .layers import block_influence, remove_layers
from .loading import load_causal_lm, require_transformers
from .magnitude import Magnitude
from .memory import PeakRSS
from .methods import METHODS, get_method
from .oneshot import OneShotResult, prune_oneshot
from .owl import OWL, owl_sparsities
from .recover import recover
from .sparsegpt import SparseGPT, sparsegpt_prune
from .statistics import InputStatistics
from .structure_result import StructuredResult
from .structured import STRUCTURES, prune_structure, prune_units
from .targets import NM, parse_nm
from .text import calibration_tokens, evaluation_tokens
from .wanda import Wanda, wanda_scores

__all__ = ["LayerMethod", "LayerPruning", "BlockRun", "block_linears", "decoder_layers", "run_blockwise",
           "LMEvaluation", "evaluate_lm", "load_causal_lm", "require_transformers", "Magnitude", "PeakRSS", "METHODS",
           "get_method", "OneShotResult", "prune_oneshot", "OWL", "owl_sparsities", "recover", "SparseGPT",
           "sparsegpt_prune", "InputStatistics", "NM", "parse_nm", "calibration_tokens", "evaluation_tokens",
           "Wanda", "wanda_scores", "sync_config", "block_influence", "remove_layers", "StructuredResult",
           "STRUCTURES", "prune_structure", "prune_units", "calibration_sentences", "distill", "embedding_cosine",
           "evaluation_sentences", "load_sentence_encoder", "sentence_batches", "sentence_embeddings"]
