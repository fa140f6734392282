"""Perplexity on held-out text and top-1 next-token agreement with a reference (dense) model.

The token stream is cut into windows of `window` tokens advanced by `stride` (default: the
window itself, i.e. disjoint windows, the protocol of the SparseGPT and Wanda papers). Every
token after a window's first is predicted from the tokens before it in that window; with a
stride shorter than the window, only the tokens a window adds are scored, each with up to
window − 1 tokens of context (sliding windows):

    perplexity = exp( − Σ log p(t_k | context) / #scored tokens )
    agreement  = #{argmax p(· | context) = reference model's argmax} / #scored tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import PrunekitError
from ..modes import evaluation_mode


@dataclass
class LMEvaluation:
    perplexity: float
    nll: float                 # mean negative log-likelihood per scored token (nats)
    tokens: int                # tokens scored
    predictions: torch.Tensor  # the top-1 prediction at every scored position, in order
    agreement: float | None = None

    def row(self) -> dict:
        row = {"perplexity": self.perplexity, "nll": self.nll, "eval_tokens": self.tokens}
        if self.agreement is not None:
            row["agreement"] = self.agreement
        return row


def windows(length: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position within the window) for a stream of `length` tokens."""
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise PrunekitError(f"Need window ≥ 2 and 1 ≤ stride ≤ window, got window={window}, stride={stride}.")
    if length < 2:
        raise PrunekitError(f"Evaluation text has {length} tokens; at least 2 are needed.")
    spans, scored_until = [], 1  # the stream's first token is never predicted
    for begin in range(0, length - 1, stride):
        end = min(begin + window, length)
        if end <= scored_until:
            break
        spans.append((begin, end, max(scored_until - begin, 1)))
        scored_until = end
    return spans


def evaluate_lm(model, tokens: torch.Tensor, *, window: int = 512, stride: int | None = None,
                reference: LMEvaluation | torch.Tensor | None = None, device="cpu") -> LMEvaluation:
    """Perplexity of `model` on the 1-D token stream, and agreement with `reference` predictions."""
    tokens = torch.as_tensor(tokens).flatten().long()
    total, count, predictions = 0.0, 0, []
    with torch.no_grad(), evaluation_mode(model):
        for begin, end, first in windows(tokens.numel(), window, stride):
            ids = tokens[begin:end].unsqueeze(0).to(device)
            logits = model(input_ids=ids, use_cache=False).logits[0, first - 1:-1].float()
            targets = ids[0, first:]
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += targets.numel()
            predictions.append(logits.argmax(-1).cpu())
    predictions = torch.cat(predictions)
    nll = total / count
    result = LMEvaluation(math.exp(nll), nll, count, predictions)
    if reference is not None:
        expected = reference.predictions if isinstance(reference, LMEvaluation) else reference
        if expected.shape != predictions.shape:
            raise PrunekitError(f"Reference predictions cover {expected.numel()} positions but this evaluation "
                                f"{predictions.numel()}; evaluate both models on the same tokens and windows.")
        result.agreement = float((predictions == expected).double().mean())
    return result
