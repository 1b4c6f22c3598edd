"""Pruning: Prune Once for All (Zafrir et al. 2021) gradual magnitude pruning (weights, blocks or
whole heads/neurons), mask-locked fine-tuning and sparsity reports."""

from distilprune.prune.hook import LockSparsityHook, PruningHook
from distilprune.prune.masks import (
    block_magnitude_mask,
    compute_mask,
    detect_block_pattern,
    global_masks,
    magnitude_mask,
)
from distilprune.prune.parametrize import (
    WeightMask,
    attach_masks,
    current_masks,
    finalize,
    has_masks,
    lock_sparsity,
    masked_parameters,
    prunable_parameters,
    update_masks,
)
from distilprune.prune.schedules import cubic_sparsity, is_update_step
from distilprune.prune.sparsifier import GradualSparsifier, PruneConfig
from distilprune.prune.sparsity import sparsity_report, write_sparsity_json
from distilprune.prune.structured import (
    StructuredMask,
    attach_structured_masks,
    remove_pruned,
    update_structured_masks,
)

__all__ = [
    "GradualSparsifier",
    "LockSparsityHook",
    "PruneConfig",
    "PruningHook",
    "StructuredMask",
    "WeightMask",
    "attach_masks",
    "attach_structured_masks",
    "block_magnitude_mask",
    "compute_mask",
    "cubic_sparsity",
    "current_masks",
    "detect_block_pattern",
    "finalize",
    "global_masks",
    "has_masks",
    "is_update_step",
    "lock_sparsity",
    "magnitude_mask",
    "masked_parameters",
    "prunable_parameters",
    "remove_pruned",
    "sparsity_report",
    "update_masks",
    "update_structured_masks",
    "write_sparsity_json",
]
