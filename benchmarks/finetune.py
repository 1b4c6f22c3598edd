"""Fine-tuning benchmark on the Kaggle disaster tweets (issue: foundation).

Validation = stratified 15% of train.csv (seed 42). Models: TF-IDF + logistic regression,
``minilm-l6`` and ``mpnet-base``, each with and without tweet preprocessing. Writes
``results/finetune.{json,md}`` and Kaggle-style test predictions per transformer run.

    python benchmarks/finetune.py [--only minilm-l6] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch
from common import (
    DISASTER_TEST,
    PREPROCESS,
    RESULTS,
    WORK,
    data_config,
    load_summary,
    require_data,
    write_results,
)

from distilprune.jobs.common import prepare_data
from distilprune.jobs.finetune import FinetuneConfig, finetune
from distilprune.jobs.inference import predict_file
from distilprune.reporting.formatting import markdown_table
from distilprune.train import TrainConfig

RUNS = {
    "minilm-l6": TrainConfig(epochs=3, lr=8e-5, batch_size=32, patience=1, seed=42),
    "mpnet-base": TrainConfig(epochs=1, lr=4e-5, batch_size=32, patience=1, seed=42),
}


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


def transformer_run(alias: str, preprocess: bool, fresh: bool) -> dict:
    name = f"{alias}{'-pre' if preprocess else '-raw'}"
    out = WORK / "finetune" / name
    summary = None if fresh else load_summary(out)
    if summary is None:
        cfg = FinetuneConfig(model=alias, out=str(out), data=data_config(preprocess),
                             train=RUNS[alias], overwrite=True)
        summary = finetune(cfg)
    predictions = RESULTS / f"predictions_{name}.csv"
    if fresh or not predictions.is_file():
        predict_file(out, DISASTER_TEST, predictions, overwrite=True)
    shutil.copy(out / "confusion_matrix.png", RESULTS / f"finetune_confusion_{name}.png")
    return {"model": alias, "preprocess": preprocess, **_pick(summary["metrics"]),
            "seconds": summary["train"]["seconds"], "steps": summary["train"]["steps"],
            "parameters": summary["parameters"], "predictions": predictions.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=list(RUNS), action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="retrain even if a finished run exists")
    args = parser.parse_args()
    require_data()
    torch.set_num_threads(args.threads)
    rows = [tfidf_baseline(False), tfidf_baseline(True)]
    for alias in args.only or list(RUNS):
        for preprocess in (False, True):
            rows.append(transformer_run(alias, preprocess, args.fresh))
            print(rows[-1], flush=True)
    payload = {
        "benchmark": "finetune",
        "data": "disaster_tweets/train.csv, stratified 15% validation split (seed 42)",
        "threads": args.threads,
        "preprocess_steps": PREPROCESS,
        "train_configs": {k: vars(v) for k, v in RUNS.items()},
        "rows": rows,
        "command": "python benchmarks/finetune.py",
    }
    columns = ["model", "preprocess", "accuracy", "f1", "precision", "recall", "seconds", "parameters"]
    md = ("# Fine-tuning on disaster tweets (validation split, 15%, seed 42)\n\n"
          + markdown_table(rows, columns)
          + f"\nCommand: `python benchmarks/finetune.py` ({args.threads} threads). "
          "Test-set predictions: `predictions_*.csv`.\n")
    write_results("finetune", payload, md)
    print(md)


if __name__ == "__main__":
    main()
