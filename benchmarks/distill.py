"""Distillation benchmark on the disaster tweets (issue: DistilBERT-style distillation).

Teacher: ``mpnet-base`` (12L/768H) fine-tuned on raw tweets by ``benchmarks/finetune.py``.
Students (6L/768H, every other teacher layer), all fine-tuned on the same split and budget:
(a) fine-tuned directly from the every-other-layer init, (b) general-distilled (triple loss on
tweets + SST-2 text) then fine-tuned, (c) general-distilled then task-distilled from the
teacher's cached logits. Plus a triple-loss ablation (drop one term at a time) on a small
budget, measured by held-out masked-token accuracy, and CPU latency teacher vs student.
Every stage is saved under ``benchmarks/work/distill`` and skipped when already finished.

    python benchmarks/distill.py [--threads 2] [--gd-steps 150] [--ablation-steps 30] [--stages a,b]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from common import RESULTS, WORK, data_config, load_summary, require_data, staged, write_results

from distilprune.jobs.distill import (
    CorpusConfig,
    DistillLoss,
    GeneralDistillConfig,
    MLMHeadConfig,
    TaskLoss,
    fit_mlm_head,
    general_distill,
    make_student,
    task_finetune,
)
from distilprune.jobs.finetune import FinetuneConfig
from distilprune.reporting.formatting import markdown_table
from distilprune.train import TrainConfig

OUT = WORK / "distill"
PREPROCESS = False  # students and teacher all see the raw tweets
TEACHER = WORK / "finetune" / "mpnet-base-raw"
STAGES = ("head", "gd", "a", "b", "c", "ablation", "report")
STUDENT_TRAIN = TrainConfig(epochs=1, lr=8e-5, batch_size=32, patience=None, seed=42, checkpoint_every=25,
                            resume=True)


def student_finetune(name: str, model: Path, preprocess: bool, teacher: Path | None = None) -> dict:
    cfg = FinetuneConfig(model=str(model), out=str(OUT / name), data=data_config(preprocess),
                         train=STUDENT_TRAIN, overwrite=True)
    loss = TaskLoss(temperature=2.0, alpha_soft=0.5, alpha_hard=0.5)
    return staged(OUT / name, lambda: task_finetune(cfg, teacher, loss))


def general(name: str, mlm: Path, steps: int, loss: DistillLoss, corpus: CorpusConfig) -> dict:
    cfg = GeneralDistillConfig(
        teacher=str(mlm), out=str(OUT / name), student_layers=6, corpus=corpus, loss=loss,
        train=TrainConfig(max_steps=steps, lr=1e-4, batch_size=32, patience=None, warmup_ratio=0.05,
                          seed=42, log_every=5, checkpoint_every=25, resume=True),
        overwrite=True)
    return staged(OUT / name, lambda: general_distill(cfg))


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gd-steps", type=int, default=150)
    parser.add_argument("--head-steps", type=int, default=100)
    parser.add_argument("--ablation-steps", type=int, default=30)
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (run in that order)")
    args = parser.parse_args()
    require_data()
    torch.set_num_threads(args.threads)
    wanted = [s for s in STAGES if s in args.stages.split(",")]
    corpus = CorpusConfig(max_length=64, heldout=500, seed=0)
    mlm, init = OUT / "mpnet-mlm", OUT / "student-init"
    stages = {
        "head": lambda: staged(mlm, lambda: fit_mlm_head(MLMHeadConfig(
            teacher="mpnet-base", out=str(mlm), corpus=corpus, overwrite=True,
            train=TrainConfig(max_steps=args.head_steps, lr=2e-3, batch_size=32, patience=None, seed=0)))),
        "gd": lambda: general("student-gd", mlm, args.gd_steps, DistillLoss(), corpus),
        "a": lambda: (staged(init, lambda: make_student("mpnet-base", str(init), layers=6, overwrite=True)),
                      student_finetune("student-a-direct", init, PREPROCESS)),
        "b": lambda: student_finetune("student-b-gd-ft", OUT / "student-gd", PREPROCESS),
        "c": lambda: student_finetune("student-c-gd-td", OUT / "student-gd", PREPROCESS, TEACHER),
        "ablation": lambda: ablation(mlm, args.ablation_steps, corpus),
        "report": lambda: report(args),
    }
    for name in wanted:
        print(f"[stage] {name}", flush=True)
        stages[name]()


def ablation(mlm: Path, steps: int, corpus: CorpusConfig) -> list[dict]:
    """Triple-loss ablation: the full loss and each term dropped, same (small) budget."""
    rows = [{"variant": "full (α=5, β=2, γ=1)", "steps": steps,
             **_mlm_row(general("ablate-full", mlm, steps, DistillLoss(), corpus))}]
    for term in ("alpha_ce", "alpha_mlm", "alpha_cos"):
        summary = general(f"ablate-no-{term}", mlm, steps, DistillLoss(**{term: 0.0}), corpus)
        rows.append({"variant": f"without {term}", "steps": steps, **_mlm_row(summary)})
    return rows


def report(args) -> None:
    """Latency of every model + the results files (all other stages must have finished)."""
    names = ["student-a-direct", "student-b-gd-ft", "student-c-gd-td"]
    missing = [n for n in [*names, "student-gd", "mpnet-mlm"] if load_summary(OUT / n) is None]
    if missing or load_summary(TEACHER) is None:
        raise SystemExit(f"unfinished stages: {missing or [TEACHER.name]}")
    labels = ["(a) 6L every-other-layer init -> fine-tune", "(b) 6L general distillation -> fine-tune",
              "(c) 6L general + task distillation"]
    rows = [_row("teacher mpnet-base 12L (fine-tuned)", load_summary(TEACHER), TEACHER)]
    rows += [_row(label, load_summary(OUT / n), OUT / n) for label, n in zip(labels, names, strict=True)]
    corpus = CorpusConfig(max_length=64, heldout=500, seed=0)
    _report(rows, ablation(OUT / "mpnet-mlm", args.ablation_steps, corpus), load_summary(OUT / "mpnet-mlm"),
            load_summary(OUT / "student-gd"), TEACHER, PREPROCESS, args)


def _mlm_row(summary: dict) -> dict:
    return {"masked_accuracy": summary["masked_accuracy"],
            "teacher_masked_accuracy": summary["teacher_masked_accuracy"],
            "seconds": summary["train"]["seconds"]}


def _row(name: str, summary: dict, path: Path) -> dict:
    return {"model": name, "accuracy": summary["metrics"]["accuracy"], "f1": summary["metrics"]["f1"],
            "parameters": summary["parameters"], "train_seconds": summary["train"]["seconds"],
            "latency_b1_ms": latency(path, 1), "latency_b8_ms": latency(path, 8), "path": path.name}


def _report(rows, ablation, head, gd, teacher, preprocess, args) -> None:
    base = rows[0]
    for row in rows:
        row["accuracy_retention"] = row["accuracy"] / base["accuracy"]
        row["parameter_ratio"] = row["parameters"] / base["parameters"]
        row["speedup_b1"] = base["latency_b1_ms"] / row["latency_b1_ms"]
        row["speedup_b8"] = base["latency_b8_ms"] / row["latency_b8_ms"]
    shutil.copy(OUT / "student-gd" / "loss.png", RESULTS / "distill_loss.png")
    payload = {
        "benchmark": "distill", "threads": args.threads, "teacher": teacher.name,
        "preprocess": preprocess, "student_train": vars(STUDENT_TRAIN),
        "mlm_head": {k: head[k] for k in ("masked_accuracy_before", "masked_accuracy")},
        "general_distillation": {"steps": args.gd_steps, "batch_size": 32, "max_length": 64,
                                 "masked_accuracy": gd["masked_accuracy"],
                                 "teacher_masked_accuracy": gd["teacher_masked_accuracy"],
                                 "seconds": gd["train"]["seconds"]},
        "rows": rows, "ablation": ablation,
        "command": "python benchmarks/distill.py",
    }
    cols = ["model", "accuracy", "f1", "accuracy_retention", "parameters", "parameter_ratio",
            "latency_b1_ms", "latency_b8_ms", "speedup_b1", "speedup_b8"]
    md = ("# Distillation: mpnet-base 12L teacher -> 6L students (disaster tweets validation)\n\n"
          + markdown_table(rows, cols)
          + f"\nLatency: seq 128, {args.threads} threads, median of 10. MLM head fitted for "
          f"{args.head_steps} steps (masked acc {head['masked_accuracy']:.3f}); general distillation "
          f"{args.gd_steps} steps x 32 texts.\n\n"
          f"## Triple-loss ablation ({args.ablation_steps} steps each)\n\n"
          + markdown_table(ablation, ["variant", "steps", "masked_accuracy", "teacher_masked_accuracy",
                                      "seconds"])
          + "\nLoss curve: `distill_loss.png`. Command: `python benchmarks/distill.py`.\n")
    write_results("distill", payload, md)
    print(md)


if __name__ == "__main__":
    main()
