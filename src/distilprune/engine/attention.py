"""Int8 self-attention for the sparse engine (``csrc/attention_int8.cpp``).

Both matrix products of attention run on AVX-512 VNNI in int8 with int32 accumulation:

- scores: queries and keys quantized per token and head (symmetric, 127 levels),
  ``s[i, j] = (q8[i] . k8[j]) * sk[j] * sq[i] * scaling + bias[j]``;
- softmax in fp32 (``e = exp(s - max)``, ``l = sum e``), probabilities kept as bytes
  ``p8 = round(255 e)``;
- output: values quantized per channel over the unmasked keys,
  ``o[i, c] = (p8[i] . v8[:, c]) * sv[c] / (255 l[i])``.

Only padding masks (one additive bias per key, the same for every query) take this path;
anything else (causal or per-query masks, attention dropout in training, head dims that are not
a multiple of 16, no AVX-512 VNNI) runs PyTorch's scaled-dot-product attention unchanged.
:func:`reference_attention` is the same arithmetic in PyTorch, the kernel's test oracle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NAME = "distilprune_int8"
HEAD_DIMS = range(16, 257, 16)


def _quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 along ``dim``: values in [-127, 127] (as float) and their scales."""
    amax = x.abs().amax(dim, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.clamp(torch.round(x * inv), -127, 127), scale


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_bias: torch.Tensor, scaling: float) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch: (B, H, S, D) inputs, (B, S) bias -> (B, S, H, D)."""
    q8, sq = _quantize(q.float(), -1)
    k8, sk = _quantize(k.float(), -1)
    valid = torch.isfinite(key_bias)[:, None, :, None]  # (B, 1, S, 1)
    v8, sv = _quantize(torch.where(valid, v.float(), torch.zeros_like(v, dtype=torch.float)), -2)
    acc = (q8.double() @ k8.double().transpose(-1, -2)).float()  # exact: |acc| < 2^24
    scores = (acc * sk.transpose(-1, -2)) * (sq * scaling) + key_bias[:, None, None, :]
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    p8 = torch.round(e * 255)
    acc2 = (p8.double() @ v8.double()).float()
    out = (acc2 * (1.0 / (255.0 * e.sum(-1, keepdim=True)))) * sv
    return out.transpose(1, 2).contiguous()


def key_bias_from_mask(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """One additive bias per key from a padding mask (bool: True attends; or additive float).

    None when the mask is not the same for every query (then the kernel does not apply).
    """
    if mask is None:
        return torch.zeros(batch, keys)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-1] != keys:
        return None
    first = mask[:, :, :1, :]
    if mask.shape[2] != 1 and not torch.equal(mask, first.expand_as(mask)):
        return None
    row = first[:, 0, 0, :].expand(batch, keys)
    if row.dtype == torch.bool:
        return torch.zeros(batch, keys).masked_fill(~row, -math.inf)
    return row.float().masked_fill(row.float() <= torch.finfo(torch.float32).min / 2, -math.inf)


class _BiasCache:
    """The key bias of the last mask seen (every layer of a forward gets the same mask object)."""

    mask: torch.Tensor | None = None
    bias: torch.Tensor | None = None


_CACHE = _BiasCache()


def _cached_key_bias(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    if mask is not None and mask is _CACHE.mask and _CACHE.bias is not None \
            and _CACHE.bias.shape == (batch, keys):
        return _CACHE.bias
    bias = key_bias_from_mask(mask, batch, keys)
    _CACHE.mask, _CACHE.bias = mask, bias
    return bias


def int8_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: torch.Tensor | None,
                           scaling: float | None = None, dropout: float = 0.0,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: int8 kernel for padding masks, else PyTorch SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, head_dim = query.shape
    scaling = head_dim ** -0.5 if scaling is None else scaling
    bias = None
    if (not module.training or dropout == 0.0) and _kernel_applies(query, key, value) \
            and not kwargs.get("output_attentions") and not getattr(module, "is_causal", False):
        bias = _cached_key_bias(attention_mask, batch, key.shape[2])
    if bias is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=False, **kwargs)
    return _ops().int8_attention(query, key, value, bias, float(scaling)), None


def _kernel_applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    return (attention_available() and not torch.is_grad_enabled()
            and query.shape[-1] in HEAD_DIMS and query.shape == key.shape == value.shape
            and query.dtype == torch.float32)


@functools.cache
def _ops() -> Any:
    from distilprune.engine.kernels import kernels

    return kernels()


@functools.cache
def attention_available() -> bool:
    """Whether the int8 attention kernel runs here (the extension is built, AVX-512 VNNI)."""
    from distilprune.engine.kernels import kernel_status

    status = kernel_status()
    return status.available and status.isa == "avx512_vnni" and hasattr(_ops(), "int8_attention")


@functools.cache
def register() -> str:
    """Register the attention function (and its mask format: SDPA's) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, int8_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def uses_attention_interface(model: nn.Module) -> bool:
    """Whether the model's attention goes through transformers' attention-function registry."""
    import sys

    module = sys.modules.get(type(model).__module__)
    return module is not None and hasattr(module, "ALL_ATTENTION_FUNCTIONS")


def use_int8_attention(model: nn.Module) -> bool:
    """Switch ``model`` to the int8 attention where it applies; returns whether it did."""
    if not (attention_available() and uses_attention_interface(model)):
        return False
    model.set_attn_implementation(register())
    return True


AttentionFn = Callable[..., tuple[torch.Tensor, None]]
