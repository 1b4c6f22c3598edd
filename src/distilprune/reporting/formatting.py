"""Number formats and markdown tables shared by every report ("–" marks a missing value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MISSING = "–"


def num(value: float | None, fmt: str = "{:.4f}") -> str:
    """``value`` in ``fmt``, or the missing mark."""
    return MISSING if value is None else fmt.format(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal."""
    return MISSING if value is None else f"{value:.1%}"


def count(value: int | None) -> str:
    """A parameter count: ``22.71M`` / ``384.0K``."""
    if value is None:
        return MISSING
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}K"


def megabytes(value: float | None) -> str:
    """Bytes as MB with one decimal (0 or missing: the missing mark)."""
    return MISSING if not value else f"{value / 1e6:.1f}"


def cell(value: Any) -> str:
    """A table cell: floats with the digits their size needs, ``None`` empty."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
