"""The one exception family prunekit raises for bad input.

Every message says what was wrong *and* what to do about it. Operations validate before
they change anything, so catching a PrunekitError means the user's model is untouched.
"""


class PrunekitError(ValueError):
    """Bad input to prunekit. Subclasses ValueError so generic handlers still catch it."""


class MaskError(PrunekitError):
    """A mask that is not binary, has the wrong shape, or names an unknown parameter."""


class AmountError(PrunekitError):
    """A sparsity / amount that is out of range for the tensors it applies to."""


class RecipeError(PrunekitError):
    """A recipe (YAML or dict) that does not match the schema."""


class GraphError(PrunekitError):
    """A model whose structure prunekit cannot analyse safely."""


def did_you_mean(name: str, choices) -> str:
    """' Did you mean 'x'?' for the closest known name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
