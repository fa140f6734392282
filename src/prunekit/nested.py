"""Model inputs and outputs: nested tensors (tuples, lists, dicts, HF ModelOutputs) and the one
type for example inputs that every prunekit call accepts."""

from __future__ import annotations

import torch


def tensors_in(obj):
    """Every tensor inside nested tuples / lists / dicts, depth first, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors_in(item)


class ExampleInputs:
    """What `model(...)` is called with: positional and keyword inputs.

        ExampleInputs(x)                       # model(x)
        ExampleInputs(x, mask)                 # model(x, mask)
        ExampleInputs(input_ids=ids, attention_mask=m)   # model(input_ids=ids, attention_mask=m)

    Every prunekit function that runs a model accepts one of these, or the shorthand it stands
    for: a tensor (one positional input), a tuple (positional inputs) or a dict (keyword inputs);
    `ExampleInputs.of` turns any of them into this type.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    @classmethod
    def of(cls, example) -> ExampleInputs:
        if isinstance(example, ExampleInputs):
            return example
        if isinstance(example, dict):
            return cls(**example)
        if isinstance(example, tuple):
            return cls(*example)
        return cls(example)

    def __call__(self, model):
        """model(*args, **kwargs)."""
        return model(*self.args, **self.kwargs)

    def tensors(self):
        return tensors_in((self.args, self.kwargs))

    def __repr__(self) -> str:
        parts = [_describe(a) for a in self.args] + [f"{k}={_describe(v)}" for k, v in self.kwargs.items()]
        return f"ExampleInputs({', '.join(parts)})"


def model_inputs(batch_inputs) -> ExampleInputs:
    """The call a calibration batch's inputs stand for: a dict is keyword inputs (a tokenizer's
    output), an ExampleInputs is itself, anything else is the single positional input."""
    if isinstance(batch_inputs, (dict, ExampleInputs)):
        return ExampleInputs.of(batch_inputs)
    return ExampleInputs(batch_inputs)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    return type(value).__name__
