"""Helpers shared by the benchmark scripts (paths, result files, markdown tables)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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


def result_path(name: str, suffix: str) -> Path:
    """``results/<name><suffix>``, its folder created: ``name`` may be ``trials/<stem>`` (trial and
    variant runs go to ``results/trials/``, beside their own json/md/png)."""
    path = RESULTS / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (``name`` may be ``trials/<stem>``)."""
    from distilprune.io import atomic_file, write_json

    write_json(result_path(name, ".json"), payload)
    with atomic_file(result_path(name, ".md")) as handle:
        handle.write(markdown)


def load_summary(model_dir: Path, name: str = "distilprune.json") -> dict[str, Any] | None:
    """The saved summary of a finished run, ``distilprune.json`` (``export.json`` for an
    export), or None (benchmarks resume by skipping finished runs)."""
    meta = model_dir / name
    return json.loads(meta.read_text()) if meta.is_file() else None


def stage_mismatch(summary: Mapping[str, Any], expect: Mapping[str, Any]) -> str | None:
    """The first ``dotted.key=value`` of ``expect`` that ``summary`` disagrees with (paths compared
    resolved, so a stage linked in from another work directory still matches), else None."""
    for key, want in expect.items():
        have: Any = summary
        for part in key.split("."):
            have = have.get(part) if isinstance(have, Mapping) else None
        if isinstance(want, Path):
            have, want = (Path(have).resolve() if have else None), want.resolve()
        if have != want:
            return f"{key}={have!r}, this run asks for {want!r}"
    return None


def staged(out: Path, run: Callable[[], Any], expect: Mapping[str, Any] | None = None,
           summary_name: str = "distilprune.json") -> Any:
    """Run ``run()`` unless ``out`` already holds a finished model or export (its
    ``summary_name`` file exists; benchmarks resume).

    A finished stage is reused only if its summary agrees with ``expect``
    (e.g. ``{"config.train.max_steps": 1015}``); otherwise the run stops with a one-line error.
    """
    summary = load_summary(out, summary_name)
    if summary is not None and expect and (why := stage_mismatch(summary, expect)):
        raise SystemExit(f"{out} was made with {why}: use a fresh --work directory")
    if summary is None:
        start = time.perf_counter()
        summary = run()
        print(f"[stage] {out.name} done in {time.perf_counter() - start:.0f}s", flush=True)
    return summary
