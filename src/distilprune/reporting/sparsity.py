"""Sparsity reports rendered for people: a layer x tensor-kind heatmap (PNG) and a rich table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

from distilprune.io import save_png
from distilprune.prune.sparsity import short_kind


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
