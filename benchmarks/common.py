"""Helpers shared by the benchmark scripts (paths, result files, markdown tables)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Fine-tuned models shared between benchmarks (git-ignored); point it elsewhere to keep them.
WORK = Path(os.environ.get("DISTILPRUNE_BENCH_WORK", ROOT / "benchmarks" / "work"))
DATA = ROOT.parent / "shared" / "data"
DISASTER_TRAIN = DATA / "disaster_tweets" / "train.csv"
DISASTER_TEST = DATA / "disaster_tweets" / "test.csv"

sys.path.insert(0, str(ROOT / "src"))


def require_data() -> None:
    if not DISASTER_TRAIN.is_file():
        raise SystemExit(f"benchmark data missing: {DISASTER_TRAIN}")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md``."""
    from distilprune.io import atomic_file, write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", payload)
    with atomic_file(RESULTS / f"{name}.md") as handle:
        handle.write(markdown)


def load_summary(model_dir: Path) -> dict[str, Any] | None:
    """The saved ``distilprune.json`` of a finished run (benchmarks resume by skipping it)."""
    meta = model_dir / "distilprune.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def staged(out: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``run()`` unless ``out`` already holds a finished model (benchmarks resume)."""
    summary = load_summary(out)
    if summary is None:
        start = time.perf_counter()
        summary = run()
        print(f"[stage] {out.name} done in {time.perf_counter() - start:.0f}s", flush=True)
    return summary
