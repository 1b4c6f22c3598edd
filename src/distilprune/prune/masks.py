"""Magnitude pruning masks: unstructured and 1xN blocks along the input dimension.

A mask is a bool tensor shaped like the weight: ``True`` keeps a weight, ``False`` zeroes it.

Weights are scored as a 2D matrix ``[out, in]`` (the ``nn.Linear`` layout). Tensors with more
than two dimensions are viewed as ``weight.reshape(shape[0], -1)``: dimension 0 is the output
and the remaining dimensions, flattened, are the input (XLNet's ``o`` of shape
``[d_model, n_head, d_head]``, used as ``ibnd,hnd->ibh``). With ``input_first=True`` dimension 0
is the input instead and the matrix is transposed (XLNet's ``q/k/v/r``, used as
``ibh,hnd->ibnd``), so blocks always run along the dimension that is summed over in the matmul.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distilprune.errors import UserError

# A module inside a transformer block (``encoder.layer.3.attention.self.query``,
# ``transformer.layer.2.ffn.lin1``, ``layers.1.mlp``); group 1 is the block's index.
BLOCK_MODULE = re.compile(r"(?:^|\.)layers?\.(\d+)\.")

METHODS = ("unstructured", "block")
NORMS = ("l1", "l2")


def as_matrix(weight: torch.Tensor, input_first: bool = False) -> torch.Tensor:
    """View ``weight`` as ``[out, in]`` (see the module docstring for tensors of >2 dims)."""
    if weight.ndim < 2:
        raise ValueError(f"cannot prune a tensor of shape {tuple(weight.shape)} (needs >= 2 dims)")
    matrix = weight.reshape(weight.shape[0], -1)
    return matrix.t() if input_first else matrix


def from_matrix(matrix: torch.Tensor, shape: torch.Size, input_first: bool = False) -> torch.Tensor:
    """Inverse of :func:`as_matrix`: back to the original ``shape``."""
    return (matrix.t() if input_first else matrix).reshape(shape)


def scored_weight(weight: torch.Tensor, input_norm: torch.Tensor | None, input_first: bool) -> torch.Tensor:
    """``|w|`` scaled by the input feature norms (a ``[out, in]`` weight by column, an
    input-first one by row); the weight itself without norms."""
    if input_norm is None:
        return weight
    return weight * (input_norm[:, None] if input_first else input_norm[None, :])


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise UserError(f"sparsity must be in [0, 1], got {sparsity}")


def mask_scores(weight: torch.Tensor, method: str = "unstructured", block_size: int = 4,
                norm: str = "l2", input_first: bool = False) -> torch.Tensor:
    """Flat importance scores of the pruning units of ``weight``: ``|w|`` per entry
    (``"unstructured"``) or the norm of every 1 x ``block_size`` block (``"block"``)."""
    if method == "unstructured":
        return weight.detach().abs().flatten().float()
    if method == "block":
        if block_size < 1:
            raise UserError(f"block size must be >= 1, got {block_size}")
        return block_scores(as_matrix(weight, input_first), block_size, norm).flatten()
    raise UserError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def mask_from_units(keep: torch.Tensor, weight: torch.Tensor, method: str = "unstructured",
                    block_size: int = 4, input_first: bool = False) -> torch.Tensor:
    """Expand a flat keep-flag per pruning unit (see :func:`mask_scores`) to a weight mask."""
    if method == "unstructured":
        return keep.reshape(weight.shape)
    rows = as_matrix(weight, input_first).shape
    keep = keep.reshape(rows[0], -1, 1).expand(-1, -1, block_size).reshape(rows[0], -1)[:, : rows[1]]
    return from_matrix(keep, weight.shape, input_first)


def lowest_off(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-flags zeroing exactly ``round(sparsity * n)`` lowest ``scores`` (stable on ties)."""
    _check_sparsity(sparsity)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    n_zero = int(round(sparsity * scores.numel()))
    if n_zero:
        keep[torch.argsort(scores, stable=True)[:n_zero]] = False
    return keep


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask zeroing exactly ``round(sparsity * numel)`` smallest-|w| entries."""
    return compute_mask(weight, sparsity)


def _block_view(matrix: torch.Tensor, block_size: int) -> tuple[torch.Tensor, int]:
    """Pad ``[out, in]`` with zeros to a multiple of ``block_size``; return ``[out, nb, bs]``."""
    pad = (-matrix.shape[1]) % block_size
    padded = F.pad(matrix, (0, pad)) if pad else matrix
    return padded.reshape(matrix.shape[0], -1, block_size), pad


def block_scores(matrix: torch.Tensor, block_size: int = 4, norm: str = "l2") -> torch.Tensor:
    """L1 or L2 norm of every 1 x ``block_size`` block of ``[out, in]`` -> ``[out, n_blocks]``.

    A ragged tail block (``in % block_size != 0``) is rescaled to a full block's norm (mean
    absolute value or RMS times the block size), so it is neither favoured nor penalised.
    """
    if norm not in NORMS:
        raise UserError(f"unknown block norm {norm!r}; choose one of {', '.join(NORMS)}")
    blocks, pad = _block_view(matrix.detach().float(), block_size)
    scores = blocks.abs().sum(-1) if norm == "l1" else blocks.pow(2).sum(-1).sqrt()
    if pad:
        tail = block_size - pad
        scores[:, -1] *= block_size / tail if norm == "l1" else math.sqrt(block_size / tail)
    return scores


def block_magnitude_mask(
    weight: torch.Tensor,
    sparsity: float,
    block_size: int = 4,
    norm: str = "l2",
    input_first: bool = False,
) -> torch.Tensor:
    """Mask zeroing the ``round(sparsity * n_blocks)`` lowest-norm 1 x ``block_size`` blocks.

    Blocks are ``block_size`` consecutive entries of one row of the ``[out, in]`` matrix, i.e.
    along the input dimension. With ``in % block_size == 0`` the element sparsity is exact up
    to rounding to whole blocks.
    """
    return compute_mask(weight, sparsity, "block", block_size, norm, input_first)


def compute_mask(
    weight: torch.Tensor,
    sparsity: float,
    method: str = "unstructured",
    block_size: int = 4,
    norm: str = "l2",
    input_first: bool = False,
) -> torch.Tensor:
    """Mask zeroing the ``round(sparsity * units)`` lowest-scoring entries (``"unstructured"``,
    :func:`magnitude_mask`) or 1 x ``block_size`` blocks (``"block"``, :func:`block_magnitude_mask`)."""
    scores = mask_scores(weight, method, block_size, norm, input_first)
    return mask_from_units(lowest_off(scores, sparsity), weight, method, block_size, input_first)


def global_masks(
    weights: Sequence[tuple[torch.Tensor, bool]],
    sparsity: float,
    method: str = "unstructured",
    block_size: int = 4,
    norm: str = "l2",
) -> list[torch.Tensor]:
    """Masks for ``(weight, input_first)`` pairs with *one* threshold across all of them (as
    ``torch.nn.utils.prune.global_unstructured``): ``round(sparsity * units)`` lowest-scoring
    entries or blocks of the whole set are zeroed, so layers end up unevenly sparse."""
    scores = [mask_scores(w, method, block_size, norm, first) for w, first in weights]
    keep = lowest_off(torch.cat(scores), sparsity).split([s.numel() for s in scores])
    return [mask_from_units(k, w, method, block_size, first)
            for k, (w, first) in zip(keep, weights, strict=True)]


def detect_block_pattern(weight: torch.Tensor, block_size: int, input_first: bool = False) -> bool:
    """True when ``weight`` has zeros and every 1 x ``block_size`` block is all-zero or zero-free.

    A ragged tail block only counts its real entries.
    """
    matrix = as_matrix(weight.detach(), input_first)
    zeros, _ = _block_view((matrix == 0).to(torch.int32), block_size)
    real, _ = _block_view(torch.ones_like(matrix, dtype=torch.int32), block_size)
    zero_count, real_count = zeros.sum(-1), real.sum(-1)
    if not bool(zero_count.any()):
        return False
    return bool(((zero_count == 0) | (zero_count == real_count)).all())
