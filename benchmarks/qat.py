"""QAT must earn its keep (issue #21): fp32 vs PTQ dynamic vs PTQ static vs QAT-static int8.

One fine-tuned model, ``benchmarks/work/prune609/dense`` (MiniLM-L6, 609 steps on the disaster
tweets, ``prune.py``), in four ONNX Runtime forms, measured in one run (each in its own process,
same threads, inputs padded to the model's max length, 96 tokens):

- ``fp32``: ``distilprune export``;
- ``ptq-dynamic``: ``export --int8`` (int8 weights incl. embeddings, activations quantized per run);
- ``ptq-static``: ``distilprune quantize`` (QDQ, activation ranges calibrated (min/max) on the first
  ``--calibration`` training texts);
- ``qat-static``: a short QAT fine-tune from the same model (``finetune --qat``; one evaluation, at
  the end: no checkpoint is picked on the validation split), then ``export --quantization
  qat-static`` (QDQ with the learned activation scales and weight scales; nothing calibrated).

Accuracy on the project's validation split of ``train.csv`` (stratified 15 %, seed 42: the split
the model was fine-tuned with), latency at batch 1 and 8, size on disk. The stages are
``recipes/qat.yaml``'s (its ``qat-main`` pair repeated for each ``--qat``), run by ``distilprune
run``'s engine in ``--work`` (default ``benchmarks/work/qat``; finished stages are skipped, a
changed setting re-runs what it changes). Writes ``benchmarks/results/qat.{json,md}``.

    nice -n 19 .venv/bin/python benchmarks/qat.py [--threads 2] [--qat main:200:1e-5 ...]

``--qat NAME:STEPS:LR[:OPTIONS]`` (repeatable) adds a QAT run; OPTIONS, comma-separated:
``kd`` (distil from the fp32 source, soft targets only, instead of the labels), ``freeze=F``
(activation observers stop updating after that fraction of the steps). The summary takes the
most accurate QAT row and says how many were tried.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    ROOT,
    WORK,
    data_config,
    graph_recipe,
    load_summary,
    require_data,
    run_main,
    split_settings,
    write_results,
    write_split,
)

from distilprune.config import load_yaml
from distilprune.export import OnnxClassifier
from distilprune.jobs.common import prepare_data
from distilprune.jobs.graph import GraphRecipe, run_graph
from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "qat.yaml"
SOURCE = WORK / "prune609" / "dense"
ROWS = {"fp32": "fp32-onnx", "ptq-dynamic": "ptq-dynamic-onnx", "ptq-static": "ptq-static-onnx"}


@dataclass
class QATRun:
    """One QAT fine-tune of the source model: ``NAME:STEPS:LR[:OPTIONS]``."""

    name: str
    steps: int
    lr: float
    freeze: float | None = None
    kd: bool = False

    @classmethod
    def parse(cls, text: str) -> QATRun:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise SystemExit(f"--qat wants NAME:STEPS:LR[:OPTIONS], got {text!r}")
        run = cls(parts[0], int(parts[1]), float(parts[2]))
        for option in filter(None, (parts[3] if len(parts) == 4 else "").split(",")):
            if option == "kd":
                run.kd = True
            elif option.startswith("freeze="):
                run.freeze = float(option.split("=", 1)[1])
            else:
                raise SystemExit(f"unknown --qat option {option!r} (freeze=F, kd)")
        return run

    def describe(self) -> str:
        freeze = f", observers frozen after {self.freeze:.0%}" if self.freeze is not None else ""
        kd = (f", distilled from the fp32 source (T={KD_LOSS['temperature']:g}, soft targets only)"
              if self.kd else ", labels only")
        return f"{self.steps} steps at lr {self.lr:g}{kd}{freeze}"


KD_LOSS = {"temperature": 2.0, "alpha_soft": 1.0, "alpha_hard": 0.0}


def qat_stages(run: QATRun, finetune: dict[str, Any], export: dict[str, Any],
               source: Path) -> dict[str, Any]:
    """The recipe's ``qat-main`` pair (``finetune``, ``export``) for ``run``: QAT from the source
    model on its own split, one evaluation at the end (optionally distilled from the source, the
    fp32 model being the teacher), then its qat-static export."""
    body = copy.deepcopy(finetune)
    body["qat"] = {"freeze_observers_at": run.freeze}
    body["train"] |= {"max_steps": run.steps, "lr": run.lr, "eval_every": run.steps}
    if run.kd:
        body |= {"teacher": str(source), "loss": dict(KD_LOSS)}
    return {f"qat-{run.name}": body,
            f"qat-{run.name}-static-onnx": copy.deepcopy(export) | {"from": {"model": f"qat-{run.name}"}}}


def run_settings(body: dict[str, Any], args: argparse.Namespace, split: dict[str, Path]) -> dict[str, Any]:
    """A stage's settings from this run: the source model and the split files as absolute paths,
    the calibration and parity text counts."""
    settings = split_settings(body, split)
    if "model" not in (body.get("from") or {}) and body["kind"] != "quantize":
        settings["model"] = str(args.source)
    if body["kind"] == "export":
        settings["limit"] = args.parity_texts
    if body["kind"] == "quantize":
        settings |= {"limit": args.calibration, "parity_limit": args.parity_texts}
    return settings


def build_recipe(args: argparse.Namespace, runs: list[QATRun], split: dict[str, Path]) -> GraphRecipe:
    """``recipes/qat.yaml`` with one QAT pair per run, this run's paths, threads and ``--set``."""
    data = load_yaml(RECIPE)
    stages = data["stages"]
    finetune, export = stages.pop("qat-main"), stages.pop("qat-main-static-onnx")
    for run in runs:
        stages |= qat_stages(run, finetune, export, args.source)
    overrides = {"stages": {name: run_settings(body, args, split) for name, body in stages.items()},
                 "out": str(args.work), "threads": args.threads}
    return graph_recipe(data, overrides, args)


def prepare(args: argparse.Namespace, runs: list[QATRun], data: Any) -> dict[str, Path]:
    """Train and export every row (finished stages are skipped); ``{row: export dir}``."""
    recipe = build_recipe(args, runs, write_split(args.work / "data", data))
    run_graph(recipe)
    return ({row: args.work / stage for row, stage in ROWS.items()}
            | {f"qat-static ({run.name})": args.work / f"qat-{run.name}-static-onnx" for run in runs})


def prediction_stats(rows: dict[str, Path], texts: list[str], labels: list[int],
                     threads: int) -> dict[str, dict]:
    """Per row: accuracy, argmax agreement with fp32 and how many texts it fixes / breaks."""
    labels_np = np.asarray(labels)
    # batches of 32 as the benchmark's accuracy: dynamic int8 answers depend on batch-mates
    preds = {name: np.asarray(OnnxClassifier(path, threads=threads).predict(texts, 32))
             for name, path in rows.items()}
    base = preds["fp32"] == labels_np
    return {name: {"accuracy": float((p == labels_np).mean()),
                   "agreement_with_fp32": float((p == preds["fp32"]).mean()),
                   "fixed_vs_fp32": int(((p == labels_np) & ~base).sum()),
                   "broken_vs_fp32": int(((p != labels_np) & base).sum())}
            for name, p in preds.items()}


def table_rows(rows: dict[str, Path], measured: list[dict], stats: dict[str, dict]) -> list[dict]:
    out = []
    for (name, path), result in zip(rows.items(), measured, strict=True):
        parity = load_summary(path, "parity.json") or {}
        out.append({"row": name, "accuracy": result["accuracy"], "f1": result["f1"],
                    "vs fp32 (fixed / broken)": f"+{stats[name]['fixed_vs_fp32']} / "
                                                f"-{stats[name]['broken_vs_fp32']}",
                    "b1 p50 ms": result["latency"]["1"]["p50_ms"],
                    "b8 p50 ms": result["latency"]["8"]["p50_ms"],
                    "size MB": result["size_bytes"] / 1e6,
                    "parity max |Δlogit|": parity.get("max_abs_diff"),
                    "parity ref": parity.get("reference", "PyTorch fp32"),
                    "path": str(path)})
    return out


def qat_details(work: Path, runs: list[QATRun]) -> list[dict]:
    """Training-side numbers of each QAT run (accuracy of the weight-only and fake-quant models)."""
    details = []
    for run in runs:
        summary = load_summary(work / f"qat-{run.name}") or {}
        details.append({"name": run.name, "settings": run.describe(),
                        "torch_weights_int8_accuracy": summary["metrics"]["accuracy"],
                        "torch_fake_quant_accuracy": summary["qat"]["fake_quant_metrics"]["accuracy"],
                        "train_seconds": summary["train"]["seconds"]})
    return details


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat", action="append", type=QATRun.parse, metavar="NAME:STEPS:LR[:OPTIONS]",
                        help="a QAT run (repeatable; default main:200:1e-5)")
    parser.add_argument("--calibration", type=int, default=200, help="training texts calibrating PTQ static")
    parser.add_argument("--parity-texts", type=int, default=500, help="validation texts of the parity checks")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the fine-tuned model quantized")
    parser.add_argument("--work", type=Path, default=WORK / "qat", help="stage directory (resumable)")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override any recipe key, dotted (stages.qat-main.train.warmup_ratio=0.1)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    require_data()
    if load_summary(args.source) is None:
        raise SystemExit(f"missing {args.source}: run benchmarks/prune.py --dense-steps 609 first")
    runs = args.qat or [QATRun("main", 200, 1e-5)]
    data = prepare_data(data_config(False))
    split = load_summary(args.source, "split.json")
    if split and sorted(split["val_ids"]) != sorted(data.split["val_ids"]):
        raise SystemExit("the validation split differs from the one the source model was trained with")
    val = data.val
    rows = prepare(args, runs, data)
    from distilprune.benchmark.speed import benchmark_models

    measured = benchmark_models([str(p) for p in rows.values()], val.texts, val.labels, threads=args.threads,
                                batch_sizes=(1, 8), seq_len=96, repeats=args.repeats)
    stats = prediction_stats(rows, val.texts, val.labels, args.threads)
    table = table_rows(rows, measured, stats)
    ptq = [r for r in table if r["row"].startswith("ptq")]
    best_ptq = max(ptq, key=lambda r: r["accuracy"])
    qat = [r for r in table if r["row"].startswith("qat")]
    best_qat = max(qat, key=lambda r: r["accuracy"])  # the first of equals: runs keep their order
    summary = {"fp32_accuracy": table[0]["accuracy"], "best_ptq_accuracy": best_ptq["accuracy"],
               "best_ptq_row": best_ptq["row"], "qat_static_accuracy": best_qat["accuracy"],
               "qat_static_row": best_qat["row"], "qat_runs": len(qat),
               "first_qat_recipe_accuracy": qat[0]["accuracy"],
               "qat_at_least_best_ptq": best_qat["accuracy"] >= best_ptq["accuracy"],
               "n_val": len(val.texts)}
    command = " ".join(["nice -n 19 .venv/bin/python benchmarks/qat.py", *sys.argv[1:]])
    payload = {"benchmark": "qat", "source": str(args.source), "threads": args.threads, "seq_len": 96,
               "summary": summary, "rows": table, "prediction_stats": stats,
               "qat_runs": qat_details(args.work, runs),
               "measurements": measured, "command": command}
    write_results("qat", payload, render(payload))
    print(render(payload))


def render(payload: dict) -> str:
    """The markdown report (the analysis of why QAT does or does not win is appended by hand)."""
    summary, threads = payload["summary"], payload["threads"]
    columns = ["row", "accuracy", "f1", "vs fp32 (fixed / broken)", "b1 p50 ms", "b8 p50 ms", "size MB",
               "parity max |Δlogit|", "parity ref"]
    qat_columns = ["name", "settings", "torch_weights_int8_accuracy", "torch_fake_quant_accuracy",
                   "train_seconds"]
    verdict = ("at least as accurate as" if summary["qat_at_least_best_ptq"] else "LESS accurate than")
    return (
        "# QAT-static vs post-training int8 (MiniLM-L6 fine-tuned on disaster tweets)\n\n"
        f"Source `{payload['source']}`; validation split {summary['n_val']} tweets (stratified 15 %, "
        f"seed 42); ONNX Runtime, {threads} threads, inputs padded to {payload['seq_len']} tokens.\n\n"
        + markdown_table(payload["rows"], columns)
        + f"\nThe best QAT row, `{summary['qat_static_row']}`, {summary['qat_static_accuracy']:.4f}, "
        f"is {verdict} "
        f"the best PTQ row ({summary['best_ptq_row']}, {summary['best_ptq_accuracy']:.4f}); "
        f"fp32 {summary['fp32_accuracy']:.4f}.\n\n"
        "QAT runs (PyTorch accuracy on the same split: weights on the int8 grid only, and "
        "fake-quantized weights + activations, which the static export reproduces):\n\n"
        + markdown_table(payload["qat_runs"], qat_columns)
        + "\n" + "\n".join(f"- {line}" for line in analysis(payload)) + "\n"
        + f"\nCommand: `{payload['command']}`.\n")


def analysis(payload: dict) -> list[str]:
    """Where the QAT row's accuracy goes, from the measured numbers (one line per finding)."""
    summary, n = payload["summary"], payload["summary"]["n_val"]
    rows = {row["row"]: row for row in payload["rows"]}
    lines = [f"{name}: {row['vs fp32 (fixed / broken)']} texts vs fp32 (right where fp32 is wrong / "
             f"wrong where fp32 is right)" for name, row in rows.items() if name != "fp32"]
    for run in payload["qat_runs"]:
        row = rows[f"qat-static ({run['name']})"]
        lines.append(
            f"QAT {run['name']}: the export reproduces its fake-quantized PyTorch model (ONNX "
            f"{row['accuracy']:.4f} vs PyTorch {run['torch_fake_quant_accuracy']:.4f}, max |Δlogit| "
            f"{row['parity max |Δlogit|']:.2g}); int8 activations cost "
            f"{(run['torch_weights_int8_accuracy'] - run['torch_fake_quant_accuracy']) * n:+.0f} texts "
            f"against the same weights without them, and the fine-tune itself moved the weights-only "
            f"model by {(run['torch_weights_int8_accuracy'] - summary['fp32_accuracy']) * n:+.0f} texts "
            "from the fp32 source.")
    gap = round((summary["best_ptq_accuracy"] - summary["qat_static_accuracy"]) * n)
    if gap > 0:
        lines.append(f"The best of the {summary['qat_runs']} QAT rows is {gap} text(s) of {n} behind "
                     f"{summary['best_ptq_row']}.")
    if summary["qat_runs"] > 1:
        lines.append(f"The summary takes the best of {summary['qat_runs']} QAT runs on the split it "
                     "reports (optimistic by that choice); the first recipe tried scored "
                     f"{summary['first_qat_recipe_accuracy']:.4f}.")
    return lines


if __name__ == "__main__":
    run_main(main)
