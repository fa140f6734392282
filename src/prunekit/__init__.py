"""prunekit: prune PyTorch models, and prove what it did.

    import prunekit as pk
    pk.prune(model, 0.9)                 # global magnitude pruning, masks as parametrizations
    pk.prune_structured(model, 0.5, x)   # channels / heads with everything coupled to them
    small, record = pk.compact(model, x) # a physically smaller plain nn.Module, same outputs
    print(pk.format_table(pk.sparsity_table(model)["layers"]))
    pk.remove_masks(model)               # bake the zeros in
"""

from . import applications, criteria, data, llm, models, surgery
from .accounting import count_flops, parameter_counts, sparsity_table, storage_bytes, summary
from .blocks import find_residual_blocks, remove_blocks
from .compaction import CompactionRecord, apply_record, compact, predicted_counts
from .criteria import CRITERIA, get_criterion
from .errors import AmountError, GraphError, MaskError, PrunekitError, RecipeError
from .nested import ExampleInputs
from .masks import (MaskSet, apply_masks, effective_weight, get_masks, load_masked_state_dict, named_parameters,
                    remove_masks)
from .graph import LayerHandler, build_graph, layer_handlers, register_handler
from .prune import prune, prune_blocks, prune_granular, prune_nm, prune_structured, prune_threshold
from .pruner import Plan, Pruner
from .saving import load, save
from .table import format_table
from .training import TrainConfig, evaluate, finetune, train

__version__ = "0.1.0"

__all__ = [
    "CRITERIA", "CompactionRecord", "ExampleInputs", "LayerHandler", "layer_handlers", "Plan", "Pruner", "load", "save", "find_residual_blocks", "prune_blocks", "remove_blocks", "apply_record", "build_graph", "compact", "get_criterion", "predicted_counts",
    "prune_granular", "prune_nm", "prune_structured", "register_handler",
    "AmountError", "GraphError", "MaskError", "MaskSet", "PrunekitError", "RecipeError", "TrainConfig",
    "applications", "apply_masks", "llm", "surgery", "count_flops", "criteria", "data", "effective_weight", "evaluate", "finetune", "format_table",
    "get_masks", "load_masked_state_dict", "models", "named_parameters", "parameter_counts", "prune",
    "prune_threshold", "remove_masks", "sparsity_table", "storage_bytes", "summary", "train",
]
