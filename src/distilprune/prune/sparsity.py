"""Sparsity reports of pruned models (per tensor, per layer, overall; block pattern) and their JSON.

Rendered for people by :mod:`distilprune.reporting.sparsity` (heatmap, rich table)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distilprune.io import write_json
from distilprune.prune.masks import BLOCK_MODULE, as_matrix, detect_block_pattern
from distilprune.prune.parametrize import (
    has_masks,
    is_input_first,
    named_tensors,
    original_tensor,
    prunable_parameters,
)

BLOCK_SIZES = (32, 16, 8, 4, 2)


_SHORT = (("rel_attn", "attn"), ("attention", "attn"), ("self.", ""), ("intermediate", "inter"),
          ("output", "out"), ("attn.attn", "attn"))


def short_kind(kind: str) -> str:
    """Compact label of a tensor kind: ``attention.self.query`` -> ``attn.query``."""
    kind = kind.removesuffix(".dense")
    for old, new in _SHORT:
        kind = kind.replace(old, new)
    return kind


def _ratio(zeros: int, numel: int) -> float:
    return zeros / numel if numel else 0.0


def _summary(zeros: int, numel: int) -> dict[str, float | int]:
    return {"numel": numel, "zeros": zeros, "sparsity": _ratio(zeros, numel)}


def _layer_and_kind(qualified: str) -> tuple[int | None, str]:
    match = BLOCK_MODULE.search(qualified)
    if not match:
        return None, qualified.removesuffix(".weight")
    return int(match.group(1)), qualified[match.end():].removesuffix(".weight")


def _block_size(weight: torch.Tensor, zeros: int, input_first: bool) -> int | None:
    """Largest 1xN block size the zero pattern consists of (1: unstructured, None: dense)."""
    if not zeros:
        return None
    in_features = as_matrix(weight, input_first).shape[1]
    for size in BLOCK_SIZES:
        if in_features >= size and detect_block_pattern(weight, size, input_first):
            return size
    return 1


@torch.no_grad()
def sparsity_report(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Zeros per prunable tensor and per layer, plus global sparsity over the prunable tensors
    and over all parameters. Masked (parametrized) models are measured on the masked weights."""
    tensors = []
    for module, name, qual in prunable_parameters(model, include, exclude):
        weight = getattr(module, name)
        zeros = int((weight == 0).sum())
        layer, kind = _layer_and_kind(qual)
        tensors.append({
            "name": qual, "layer": layer, "kind": kind, "shape": list(weight.shape),
            **_summary(zeros, weight.numel()),
            "block_size": _block_size(weight, zeros, is_input_first(module, name)),
        })
    layers: dict[int, list[int]] = {}
    for entry in tensors:
        if entry["layer"] is not None:
            acc = layers.setdefault(entry["layer"], [0, 0])
            acc[0] += entry["zeros"]
            acc[1] += entry["numel"]
    seen: set[int] = set()
    all_zeros = all_numel = 0
    for module, name, _ in named_tensors(model):
        if id(original_tensor(module, name)) in seen:
            continue
        seen.add(id(original_tensor(module, name)))
        weight = getattr(module, name)
        all_zeros += int((weight == 0).sum())
        all_numel += weight.numel()
    blocks = [t["block_size"] for t in tensors if t["block_size"] is not None]
    return {
        "masked": has_masks(model),
        "tensors": tensors,
        "layers": [{"layer": i, **_summary(*layers[i])} for i in sorted(layers)],
        "prunable": _summary(sum(t["zeros"] for t in tensors), sum(t["numel"] for t in tensors)),
        "all": _summary(all_zeros, all_numel),
        "block_size": min(blocks) if blocks else None,
    }


def write_sparsity_json(report: dict[str, Any], path: str | Path) -> None:
    """Write ``report`` as JSON, atomically."""
    write_json(path, report)
