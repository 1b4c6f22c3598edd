"""Distillation: loss functions (and, in ``objectives``, the training objectives using them)."""

from distilprune.distill.losses import (
    hidden_cosine_loss,
    hidden_layer_pairs,
    layerwise_cosine_loss,
    mask_tokens,
    mlm_loss,
    soft_target_ce,
    soft_target_kl,
)

__all__ = ["hidden_cosine_loss", "hidden_layer_pairs", "layerwise_cosine_loss", "mask_tokens", "mlm_loss",
           "soft_target_ce", "soft_target_kl"]
