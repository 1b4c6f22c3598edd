"""Benchmark reports: JSON, a markdown table with ratios to the baseline, a Pareto plot."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilprune.errors import require
from distilprune.io import atomic_file, save_png, write_json
from distilprune.reporting.formatting import count, num

BASELINE_NAME = "tfidf-logreg"  # the kind (and name) of the TF-IDF + logistic regression rows


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _p50(result: dict[str, Any], batch: str) -> float | None:
    return result.get("latency", {}).get(batch, {}).get("p50_ms")


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value and base else None


def add_ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``ratios`` (vs the first model): speed-up per batch size (>1 = faster), size etc."""
    base = results[0]
    out = []
    for result in results:
        ratios = {f"speedup_b{b}": _ratio(_p50(base, b), _p50(result, b))
                  for b in base.get("latency", {})}
        ratios["throughput"] = _ratio(result.get("throughput"), base.get("throughput"))
        ratios["size"] = _ratio(result.get("size_bytes"), base.get("size_bytes"))
        ratios["params"] = _ratio(result.get("params"), base.get("params"))
        ratios["peak_rss"] = _ratio(result.get("peak_rss_mb"), base.get("peak_rss_mb"))
        if result.get("accuracy") is not None and base.get("accuracy") is not None:
            ratios["accuracy_delta"] = result["accuracy"] - base["accuracy"]
        out.append({**result, "ratios": ratios})
    return out


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    """:func:`~distilprune.reporting.formatting.num` with the benchmark's one-decimal default."""
    return num(value, fmt)


def _params(result: dict[str, Any]) -> str:
    """Parameter count, plus the non-zero count when pruning removed more than 1%."""
    params, nonzero = result.get("params"), result.get("nonzero_params")
    text = count(params)
    if params and nonzero is not None and nonzero < 0.99 * params:
        text += f" ({count(nonzero)} non-zero)"
    return text


def benchmark_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per model; speed-up and size columns are relative to the first model."""
    batches = list(results[0].get("latency", {}))
    head = ["Model", "Kind", "Size MB", "Params"]
    head += [f"p50 / p95 b{b} (ms)" for b in batches]
    head += ["Throughput (seq/s)", "Peak RSS MB", "Accuracy", "F1"]
    head += [f"Speed-up b{b}" for b in batches] + ["Size ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lat = r.get("latency", {})
        row = [r.get("name", r.get("path", "?")), r.get("kind", "?"), _num(r.get("size_mb")),
               _params(r)]
        row += [f"{_num(lat.get(b, {}).get('p50_ms'))} / {_num(lat.get(b, {}).get('p95_ms'))}"
                for b in batches]
        row += [_num(r.get("throughput")), _num(r.get("peak_rss_mb"), "{:.0f}"),
                _num(r.get("accuracy"), "{:.4f}"), _num(r.get("f1"), "{:.4f}")]
        ratios = r.get("ratios", {})
        row += [_num(ratios.get(f"speedup_b{b}"), "{:.2f}×") for b in batches]
        row.append(_num(ratios.get("size"), "{:.2f}×"))
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def _settings_line(results: Sequence[dict[str, Any]]) -> str:
    first = results[0]
    loads = [r["load_avg_1m"] for r in results if r.get("load_avg_1m") is not None]
    cpus = os.cpu_count() or 1
    warning = (f"\n\n**Warning:** the 1-minute load average reached {max(loads):.1f} on {cpus} "
               "CPUs during the run; other processes competed for the cores, so latencies are "
               "inflated and noisy." if loads and max(loads) > cpus else "")
    return (f"Sequence length {first.get('seq_len')}, {first.get('threads')} thread(s), "
            f"{first.get('repeats')} timed runs after {first.get('warmup')} warm-up runs. "
            "Latency is model time only (inputs pre-tokenized); each model ran in its own "
            f"process. Ratios are relative to the baseline **{first.get('name')}**.{warning}")


def _plot_batch(result: dict[str, Any]) -> str:
    batches = list(result.get("latency", {}))
    return "8" if "8" in batches else max(batches, key=int)


def pareto_front(points: Sequence[tuple[float, float]], maximize_y: bool) -> list[int]:
    """Indices of points not dominated (lower x and better y), sorted by x."""
    def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
        y_ok = a[1] >= b[1] if maximize_y else a[1] <= b[1]
        return a[0] <= b[0] and y_ok and a != b

    front = [i for i, p in enumerate(points) if not any(better(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(results: Sequence[dict[str, Any]], out_png: str | Path) -> None:
    """Accuracy (or, without labels, size) against p50 latency at batch 8; front dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batch = _plot_batch(results[0])
    use_acc = all(r.get("accuracy") is not None for r in results)
    xs = [_p50(r, batch) or 0.0 for r in results]
    ys = [r["accuracy"] if use_acc else r.get("size_mb", 0.0) for r in results]
    fig = Figure(figsize=(7, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(xs, ys, s=40, zorder=3)
    for x, y, r in zip(xs, ys, results, strict=True):
        ax.annotate(r.get("name", "?"), (x, y), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    front = pareto_front(list(zip(xs, ys, strict=True)), maximize_y=use_acc)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--o", color="tab:red",
            markerfacecolor="none", markersize=12, label="Pareto front", zorder=2)
    ax.set_xlabel(f"p50 latency, batch {batch} (ms)")
    ax.set_ylabel("accuracy" if use_acc else "size (MB)")
    ax.set_title("Accuracy vs latency" if use_acc else "Size vs latency (no labels given)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=110)


def write_report(results: Sequence[dict[str, Any]], out_json: str | Path, out_md: str | Path,
                 out_png: str | Path) -> dict[str, Any]:
    """Write the JSON report, the markdown table and the Pareto PNG; returns the JSON payload."""
    require(len(results) > 0, "no benchmark results to report")
    models = add_ratios(results)
    payload = {
        "baseline": models[0].get("name"),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(),
                        "onnxruntime": _version("onnxruntime"), "torch": _version("torch")},
        "models": models,
    }
    write_json(out_json, payload)
    text = f"# Benchmark\n\n{_settings_line(models)}\n\n{benchmark_table(models)}"
    with atomic_file(out_md) as handle:
        handle.write(text)
    plot_pareto(models, out_png)
    return payload
