"""prunekit: prune PyTorch models, and prove what it did.

    import prunekit as pk
    pk.prune(model, 0.9)                 # global magnitude pruning, masks as parametrizations
    print(pk.format_table(pk.sparsity_table(model)["layers"]))
    pk.remove_masks(model)               # bake the zeros in
"""

from . import criteria, data, models
from .accounting import count_flops, parameter_counts, sparsity_table, storage_bytes, summary
from .errors import AmountError, GraphError, MaskError, PrunekitError, RecipeError
from .masks import (MaskSet, apply_masks, effective_weight, get_masks, load_masked_state_dict, named_parameters,
                    remove_masks)
from .prune import prune, prune_threshold
from .table import format_table
from .training import TrainConfig, evaluate, finetune, train

__version__ = "0.1.0"

__all__ = [
    "AmountError", "GraphError", "MaskError", "MaskSet", "PrunekitError", "RecipeError", "TrainConfig",
    "apply_masks", "count_flops", "criteria", "data", "effective_weight", "evaluate", "finetune", "format_table",
    "get_masks", "load_masked_state_dict", "models", "named_parameters", "parameter_counts", "prune",
    "prune_threshold", "remove_masks", "sparsity_table", "storage_bytes", "summary", "train",
]
