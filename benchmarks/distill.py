"""Distillation benchmark on the disaster tweets (issue: DistilBERT-style distillation).

The runs are the stages of ``benchmarks/recipes/distill.yaml``, run by ``distilprune run``'s engine
(a finished stage is skipped). Teacher: ``mpnet-base`` (12L/768H) fine-tuned on raw tweets by
``benchmarks/finetune.py``. Students (6L/768H, every other teacher layer), all fine-tuned on the
same split and budget: (a) fine-tuned directly from the every-other-layer init, (b)
general-distilled (triple loss on tweets + SST-2 text) then fine-tuned, (c) general-distilled then
task-distilled from the teacher's cached logits. Plus a triple-loss ablation (drop one term at a
time) on a small budget, measured by held-out masked-token accuracy. This script adds the CPU
latency of teacher and students and writes ``results/distill.{json,md}``.

    python benchmarks/distill.py [--threads 2] [--stages mpnet-mlm,student-gd]
    python benchmarks/distill.py --set stages.student-gd.train.max_steps=20 --out /tmp/d --name trials/d
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, ROOT, WORK, check_split, load_summary, require_data, run_main, write_results

from distilprune.config import dotted_overrides, merge
from distilprune.jobs.graph import GraphRecipe, load_graph, run_graph, select
from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "distill.yaml"
STUDENTS = {"student-a-direct": "(a) 6L every-other-layer init -> fine-tune",
            "student-b-gd-ft": "(b) 6L general distillation -> fine-tune",
            "student-c-gd-td": "(c) 6L general + task distillation"}
ABLATION = {"ablate-full": "full (α=5, β=2, γ=1)", "ablate-no-alpha_ce": "without alpha_ce",
            "ablate-no-alpha_mlm": "without alpha_mlm", "ablate-no-alpha_cos": "without alpha_cos"}


def latency(model_dir: Path, batch: int, seq: int = 128, repeats: int = 10) -> float:
    """Median ms per forward pass of a classifier at ``batch`` x ``seq`` tokens."""
    from distilprune.models.loading import load_classifier

    model = load_classifier(model_dir).eval()
    ids = torch.randint(1000, 20000, (batch, seq))
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= 2:
                times.append((time.perf_counter() - start) * 1000)
    return float(sorted(times)[len(times) // 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", help="comma-separated stages of the recipe to run (default: all, "
                                         "then the report)")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override a recipe key, dotted (stages.student-gd.train.max_steps=20)")
    parser.add_argument("--out", type=Path, default=WORK / "distill", help="the runs' directory")
    parser.add_argument("--teacher", type=Path, default=WORK / "finetune" / "mpnet-base-raw",
                        help="the fine-tuned teacher of student-c (benchmarks/finetune.py makes it)")
    parser.add_argument("--name", default="distill", help="results stem (e.g. trials/distill_small)")
    args = parser.parse_args()
    require_data()
    overrides = {"out": str(args.out), "threads": args.threads,
                 "stages": {"student-c-gd-td": {"teacher": str(args.teacher)}}}
    recipe = load_graph(RECIPE, merge(dotted_overrides(args.assignments), overrides, keep_none=True))
    check_split(recipe, list(STUDENTS), lambda name: False)  # the teacher's split, raw tweets
    stages = select(recipe, args.stages)
    if load_summary(args.teacher) is None and "student-c-gd-td" in stages:
        raise SystemExit(f"the teacher {args.teacher} is not a finished run: run benchmarks/finetune.py")
    run_graph(recipe, stages)
    if args.stages is None:
        report(recipe, args)


def report(recipe: GraphRecipe, args: argparse.Namespace) -> None:
    """Latency of every model + the results files."""
    out = Path(recipe.out)
    rows = [_row("teacher mpnet-base 12L (fine-tuned)", load_summary(args.teacher), args.teacher)]
    rows += [_row(label, load_summary(out / name), out / name) for name, label in STUDENTS.items()]
    ablation = [{"variant": label, "steps": _steps(recipe, name), **_mlm_row(load_summary(out / name))}
                for name, label in ABLATION.items()]
    _report(rows, ablation, recipe, args)


def _steps(recipe: GraphRecipe, stage: str) -> int:
    return recipe.stages[stage].settings["train"]["max_steps"]


def _mlm_row(summary: dict) -> dict:
    return {"masked_accuracy": summary["masked_accuracy"],
            "teacher_masked_accuracy": summary["teacher_masked_accuracy"],
            "seconds": summary["train"]["seconds"]}


def _row(name: str, summary: dict, path: Path) -> dict:
    return {"model": name, "accuracy": summary["metrics"]["accuracy"], "f1": summary["metrics"]["f1"],
            "parameters": summary["parameters"], "train_seconds": summary["train"]["seconds"],
            "latency_b1_ms": latency(path, 1), "latency_b8_ms": latency(path, 8), "path": path.name}


def _report(rows: list[dict], ablation: list[dict], recipe: GraphRecipe, args: argparse.Namespace) -> None:
    out = Path(recipe.out)
    head, gd = load_summary(out / "mpnet-mlm"), load_summary(out / "student-gd")
    base = rows[0]
    for row in rows:
        row["accuracy_retention"] = row["accuracy"] / base["accuracy"]
        row["parameter_ratio"] = row["parameters"] / base["parameters"]
        row["speedup_b1"] = base["latency_b1_ms"] / row["latency_b1_ms"]
        row["speedup_b8"] = base["latency_b8_ms"] / row["latency_b8_ms"]
    shutil.copy(out / "student-gd" / "loss.png", RESULTS / f"{args.name}_loss.png")
    command = shlex.join(["python", "benchmarks/distill.py", *sys.argv[1:]])
    gd_steps, head_steps = _steps(recipe, "student-gd"), _steps(recipe, "mpnet-mlm")
    payload = {
        "benchmark": "distill", "threads": args.threads, "teacher": args.teacher.name,
        "preprocess": False, "recipe": str(RECIPE.relative_to(ROOT)),
        "student_train": recipe.stages["student-a-direct"].settings["train"],
        "mlm_head": {k: head[k] for k in ("masked_accuracy_before", "masked_accuracy")},
        "general_distillation": {"steps": gd_steps, "batch_size": 32, "max_length": 64,
                                 "masked_accuracy": gd["masked_accuracy"],
                                 "teacher_masked_accuracy": gd["teacher_masked_accuracy"],
                                 "seconds": gd["train"]["seconds"]},
        "rows": rows, "ablation": ablation, "command": command,
    }
    cols = ["model", "accuracy", "f1", "accuracy_retention", "parameters", "parameter_ratio",
            "latency_b1_ms", "latency_b8_ms", "speedup_b1", "speedup_b8"]
    md = ("# Distillation: mpnet-base 12L teacher -> 6L students (disaster tweets validation)\n\n"
          + markdown_table(rows, cols)
          + f"\nLatency: seq 128, {args.threads} threads, median of 10. MLM head fitted for "
          f"{head_steps} steps (masked acc {head['masked_accuracy']:.3f}); general distillation "
          f"{gd_steps} steps x 32 texts.\n\n"
          f"## Triple-loss ablation ({_steps(recipe, 'ablate-full')} steps each)\n\n"
          + markdown_table(ablation, ["variant", "steps", "masked_accuracy", "teacher_masked_accuracy",
                                      "seconds"])
          + f"\nLoss curve: `{Path(args.name).name}_loss.png`. Command: `{command}` (the runs: "
          f"`{payload['recipe']}`).\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
