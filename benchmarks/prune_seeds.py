"""Seed spread of the Prune OFA benchmark: dense vs sparse fine-tunes over several seeds.

One validation split of 1,142 tweets has a standard error of about 1.1 points, and consecutive
epochs of one run differ by up to a point, so one run cannot settle a 99 % retention target.
This reads finished ``benchmarks/prune.py`` work directories that differ only in ``--seed``
(the fine-tuning seed: data order, classifier initialisation, dropout; same split, same sparse
pre-training, same task-distillation teacher) and reports, per model, the mean and spread of
the kept (best-epoch) accuracy, and the retention of the mean sparse over the mean dense accuracy.

    python benchmarks/prune.py --work W/prune-seed1 --name trials/prune_seed1 --seed 1 \
        --kd-teacher W/prune-full/dense --ft-steps 1015 --ft-lr 1e-4 --dense-steps 609 \
        --only unstructured:0.85 unstructured:0.90 --variants ofa
    python benchmarks/prune_seeds.py --runs W/prune-full W/prune-seed1 W/prune-seed2

Spreads of trial recipes go beside their trials: ``--name trials/<stem>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import load_summary, result_path, run_main, write_results
from prune import TARGETS

from distilprune.io import save_png
from distilprune.reporting.formatting import markdown_table

DEFAULT_MODELS = ("dense", "ofa-unstructured-0.85", "ofa-unstructured-0.90")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="prune.py work directories")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="stage names inside every run; the first is the dense baseline")
    parser.add_argument("--name", default="prune_seeds",
                        help="results file stem; trials: trials/<stem> (results/trials/)")
    return parser.parse_args()


def seed_accuracies(runs: list[Path], model: str) -> list[dict]:
    """The kept accuracy and seed of ``model`` in every run (one-line exit if one is missing)."""
    found = []
    for run in runs:
        summary = load_summary(run / model)
        if summary is None:
            raise SystemExit(f"missing {run / model}: run benchmarks/prune.py on it first")
        found.append({"run": run.name, "seed": summary["config"]["train"]["seed"],
                      "accuracy": summary["metrics"]["accuracy"]})
    return found


def sparsity_of(model: str) -> float:
    """Target sparsity from a stage name like ``ofa-unstructured-0.90`` (0 for the dense one)."""
    tail = model.rsplit("-", 1)[-1]
    return float(tail) if tail.replace(".", "", 1).isdigit() else 0.0


def summarise(runs: list[Path], models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        accs = seed_accuracies(runs, model)
        values, seeds = [a["accuracy"] for a in accs], [a["seed"] for a in accs]
        if len(set(seeds)) < len(seeds):
            raise SystemExit(f"{model}: runs share a seed ({seeds}); pass runs with distinct --seed")
        rows.append({"model": model, "sparsity": sparsity_of(model), "seeds": seeds,
                     "per_seed": values, "mean": statistics.mean(values),
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "min": min(values), "max": max(values)})
    dense = rows[0]["mean"]
    for row in rows:
        row["retention_of_means"] = row["mean"] / dense
        row["per_seed_text"] = " / ".join(f"{v:.4f}" for v in row["per_seed"])
    return rows


def checks(rows: list[dict]) -> list[dict]:
    """Retention of the mean accuracy against the issue's target at each targeted sparsity."""
    out = []
    for sparsity, target in TARGETS.items():
        for row in rows[1:]:
            if abs(row["sparsity"] - sparsity) < 1e-6:
                out.append({"model": row["model"], "target": target, "retention": row["retention_of_means"],
                            "met": row["retention_of_means"] >= target})
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Per-seed accuracies (dots) and their mean (bar) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, row in enumerate(rows):
        ax.bar(i, row["mean"], color="lightsteelblue", width=0.6)
        ax.scatter([i] * len(row["per_seed"]), row["per_seed"], color="black", zorder=3, s=14)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], fontsize=8)
    low = min(min(r["per_seed"]) for r in rows)
    ax.set_ylim(low - 0.02, max(max(r["per_seed"]) for r in rows) + 0.01)
    ax.set_ylabel("validation accuracy (kept epoch)")
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    args = parse_args()
    rows = summarise(args.runs, args.models)
    results = checks(rows)
    command = " ".join(["python benchmarks/prune_seeds.py", *sys.argv[1:]])
    plot(rows, result_path(args.name, ".png"))
    md = (f"# Prune OFA over {len(args.runs)} fine-tuning seeds (disaster tweets validation)\n\n"
          + markdown_table(rows, ["model", "sparsity", "per_seed_text", "mean", "std", "retention_of_means"])
          + "\n`per_seed_text`: kept (best-epoch) accuracy per run, in the order of `--runs` (seeds "
          + ", ".join(str(s) for s in rows[0]["seeds"]) + "); retention = mean sparse / mean dense. "
          f"Plot: `{Path(args.name).name}.png`. Command: `{command}`.\n\n"
          + "".join(f"- {c['model']}: retention of means {c['retention']:.1%} (target {c['target']:.1%}): "
                    f"{'met' if c['met'] else 'NOT met'}\n" for c in results))
    write_results(args.name, {"benchmark": "prune_seeds", "runs": [str(r) for r in args.runs],
                              "rows": rows, "targets": results, "command": command}, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
