"""Distillation: loss functions (and, in ``objectives``, the training objectives using them)."""

from distilprune.distill.losses import (
    hidden_cosine_loss,
    hidden_layer_pairs,
    hidden_mse_loss,
    layerwise_cosine_loss,
    layerwise_mse_loss,
    mask_tokens,
    mlm_loss,
    soft_target_ce,
    soft_target_kl,
)

__all__ = ["hidden_cosine_loss", "hidden_layer_pairs", "hidden_mse_loss", "layerwise_cosine_loss",
           "layerwise_mse_loss", "mask_tokens", "mlm_loss", "soft_target_ce", "soft_target_kl"]
