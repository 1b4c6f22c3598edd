"""Sparsity reports of pruned models: JSON, a layer x tensor heatmap and a rich table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from distilprune.io import save_png, write_json
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


def _grid(report: dict[str, Any]) -> tuple[list[int], list[str], list[list[float]]]:
    """Layers x kinds matrix of sparsities (NaN where a layer lacks a kind)."""
    in_layers = [t for t in report["tensors"] if t["layer"] is not None]
    layers = sorted({t["layer"] for t in in_layers})
    kinds = list(dict.fromkeys(t["kind"] for t in in_layers))
    grid = [[math.nan] * len(kinds) for _ in layers]
    for t in in_layers:
        grid[layers.index(t["layer"])][kinds.index(t["kind"])] = t["sparsity"]
    return layers, kinds, grid


def _title(report: dict[str, Any]) -> str:
    return (f"sparsity: prunable {report['prunable']['sparsity']:.1%}, "
            f"all parameters {report['all']['sparsity']:.1%}")


def plot_sparsity_heatmap(report: dict[str, Any], path: str | Path) -> None:
    """Annotated heatmap (layers x tensor kinds) of the sparsity of each tensor, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, kinds, grid = _grid(report)
    size = (2.0 + 1.1 * max(1, len(kinds)), 1.8 + 0.45 * max(1, len(layers)))
    fig, ax = plt.subplots(figsize=size)
    image = ax.imshow(grid if layers else [[math.nan]], vmin=0.0, vmax=1.0, cmap="viridis",
                      aspect="auto")
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            if not math.isnan(value):
                ax.text(col, row, f"{value:.0%}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(kinds)), [short_kind(k) for k in kinds], rotation=35, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=8)
    ax.set_ylabel("layer")
    ax.set_title(_title(report), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, label="sparsity")
    fig.tight_layout()
    save_png(fig, path)


def sparsity_table(report: dict[str, Any]) -> Table:
    """Rich table: one row per layer, one column per tensor kind, plus the layer total."""
    layers, kinds, grid = _grid(report)
    table = Table(title="Sparsity", caption=_title(report))
    table.add_column("layer", justify="right")
    for kind in kinds:
        table.add_column(short_kind(kind), justify="right", overflow="fold")
    table.add_column("layer total", justify="right", style="bold")
    totals = {entry["layer"]: entry["sparsity"] for entry in report["layers"]}
    for layer, values in zip(layers, grid, strict=True):
        cells = ["" if math.isnan(v) else f"{v:.1%}" for v in values]
        table.add_row(str(layer), *cells, f"{totals[layer]:.1%}")
    for t in report["tensors"]:
        if t["layer"] is None:
            table.add_row(t["name"], *[""] * len(kinds), f"{t['sparsity']:.1%}")
    return table
