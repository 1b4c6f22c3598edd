"""Fine-tuning benchmark on the Kaggle disaster tweets (issue: foundation).

The runs are the stages of ``benchmarks/recipes/finetune.yaml`` (``minilm-l6`` and ``mpnet-base``,
each with and without tweet preprocessing, on the shared split: stratified 15 % of train.csv, seed
42; and their test-set predictions), run by ``distilprune run``'s engine: a finished stage is
skipped. This script adds the TF-IDF + logistic regression baseline on the same split and writes
``results/finetune.{json,md}``, the Kaggle-style test predictions and confusion matrices.

    python benchmarks/finetune.py [--only minilm-l6] [--threads 2] [--fresh]
    python benchmarks/finetune.py --only minilm-l6 --set stages.minilm-l6-raw.train.max_steps=20 \\
        --out /tmp/ft --name trials/finetune_small     # a reduced budget elsewhere
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from common import (
    PREPROCESS,
    RESULTS,
    ROOT,
    WORK,
    check_split,
    data_config,
    load_summary,
    require_data,
    run_main,
    write_results,
)

from distilprune.config import dotted_overrides
from distilprune.jobs.common import prepare_data
from distilprune.jobs.graph import GraphRecipe, load_graph, run_graph
from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "finetune.yaml"
MODELS = ("minilm-l6", "mpnet-base")


def tfidf_baseline(preprocess: bool) -> dict:
    """TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression on the same split."""
    from distilprune.benchmark.baseline import BASELINE_NAME, baseline_logits, fit_tfidf_logreg
    from distilprune.evaluate import classification_metrics

    start = time.perf_counter()
    data = prepare_data(data_config(preprocess))
    model = fit_tfidf_logreg(data.train.texts, data.train.labels)
    metrics = classification_metrics(data.val.labels, baseline_logits(model, data.val.texts))
    features = sum(len(t.vocabulary_) for _, t in model[0].transformer_list)
    return {"model": BASELINE_NAME, "preprocess": preprocess, **_pick(metrics),
            "seconds": round(time.perf_counter() - start, 1), "parameters": features + 1}


def _pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "f1", "precision", "recall")}


def transformer_row(recipe: GraphRecipe, name: str, publish: bool) -> dict:
    """One fine-tuned model's validation scores; with ``publish``, its test predictions and
    confusion matrix copied to the results."""
    out = Path(recipe.out)
    summary = load_summary(out / name)
    predictions = RESULTS / f"predictions_{name}.csv"
    if publish:
        shutil.copyfile(out / f"predict-{name}" / "predictions.csv", predictions)
        shutil.copyfile(out / name / "confusion_matrix.png", RESULTS / f"finetune_confusion_{name}.png")
    model, _, variant = name.rpartition("-")
    return {"model": model, "preprocess": variant == "pre", **_pick(summary["metrics"]),
            "seconds": summary["train"]["seconds"], "steps": summary["train"]["steps"],
            "parameters": summary["parameters"], "predictions": predictions.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=MODELS, action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="retrain even if a finished run exists")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override a recipe key, dotted (stages.minilm-l6-raw.train.max_steps=20)")
    parser.add_argument("--out", type=Path, default=WORK / "finetune", help="the runs' directory")
    parser.add_argument("--name", default="finetune", help="results stem (e.g. trials/finetune_small); "
                        "test predictions are copied for 'finetune' only")
    args = parser.parse_args()
    require_data()
    overrides = dotted_overrides(args.assignments) | {"out": str(args.out), "threads": args.threads}
    recipe = load_graph(RECIPE, overrides)
    runs = [f"{model}-{variant}" for model in args.only or MODELS for variant in ("raw", "pre")]
    check_split(recipe, runs, lambda name: name.endswith("-pre"))
    run_graph(recipe, [*runs, *(f"predict-{name}" for name in runs)], force=args.fresh)
    rows = [tfidf_baseline(False), tfidf_baseline(True)]
    rows += [transformer_row(recipe, name, publish=args.name == "finetune") for name in runs]
    command = shlex.join(["python", "benchmarks/finetune.py", *sys.argv[1:]])
    payload = {
        "benchmark": "finetune",
        "data": "disaster_tweets/train.csv, stratified 15% validation split (seed 42)",
        "threads": args.threads,
        "preprocess_steps": PREPROCESS,
        "recipe": str(RECIPE.relative_to(ROOT)),
        "train_configs": {name: recipe.stages[name].settings["train"] for name in runs},
        "rows": rows,
        "command": command,
    }
    columns = ["model", "preprocess", "accuracy", "f1", "precision", "recall", "seconds", "parameters"]
    md = ("# Fine-tuning on disaster tweets (validation split, 15%, seed 42)\n\n"
          + markdown_table(rows, columns)
          + f"\nCommand: `{command}` ({args.threads} threads; the runs: `{payload['recipe']}`)."
          + (" Test-set predictions: `predictions_*.csv`.\n" if args.name == "finetune" else "\n"))
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
