"""Applications of pruning beyond compression.

    capability_cut / remove_units     remove one class at the least cost to the others
                                      (a minimum vertex cut, by max-flow)
    GatedCNN / train_gated            input-dependent channel gating, FLOPs executed per input
    activation_sparsity               per layer: zero activations over data, and the FLOPs an
                                      engine skipping zero weights and activations (EIE) performs
"""

from .activation_sparsity import activation_sparsity
from .gating import (GatedBlock, GatedCNN, annealed_target, dense_flops, evaluate_gated, executed_flops,
                     skipping_forward, static_channel_masks, static_masks_for_flops, train_gated)
from .class_removal import COVERAGES, removal_accuracy, search_cut, smallest_attribution
from .mincut import CapabilityCut, UnitCut, capability_cut, covering, min_unit_cut
from .removal import attribution_units, class_accuracy, random_units, remove_units, unit_masks

__all__ = ["COVERAGES", "GatedBlock", "GatedCNN", "activation_sparsity", "dense_flops", "evaluate_gated",
           "executed_flops", "skipping_forward", "annealed_target", "static_channel_masks", "static_masks_for_flops", "train_gated", "CapabilityCut", "UnitCut", "attribution_units", "capability_cut", "class_accuracy",
           "covering", "min_unit_cut", "random_units", "removal_accuracy", "remove_units", "search_cut",
           "smallest_attribution", "unit_masks"]
