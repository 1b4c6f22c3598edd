"""Structured Prune OFA vs post-hoc shrinking on the disaster tweets (MiniLM).

Both variants remove ``--heads`` of all attention heads and ``--neurons`` of every layer's FFN
neurons (weight-magnitude importance) and are then fine-tuned for the same ``--ft-steps``:
(a) structured Prune OFA: MiniLM (``minilm-l6``) distilled on masked-LM from its dense self
    (``--gd-steps``) while heads/neurons are pruned on the cubic schedule; the pruned units are
    removed and the smaller model is fine-tuned on the tweets with its structure fixed;
(b) post-hoc shrink: the dense fine-tuned MiniLM (the baseline, ``--dense-steps``) shrunk with
    ``distilprune shrink``, then recovery fine-tuning; (b0) is the shrunk model before recovery.
Fine-tunings are on the labels (the dense baseline's recipe) unless ``--task-kd``
(task distillation from the dense fine-tune). Same validation split as ``finetune.py``.

The stages are ``prune.py``'s (MLM head, dense fine-tune, pruned distillation, fine-tuning) and
resume when rerun; a ``prune.py`` work directory's MLM head and dense fine-tune made with the
same budget can be linked in (``ln -s ../prune609/minilm-l6-mlm ../prune609/dense WORK/``).

    python benchmarks/structured.py --threads 1 --gd-steps 150 --ft-steps 609 --ft-lr 1e-4 \\
        --dense-steps 609 --heads 0.25 --neurons 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import WORK, data_config, load_summary, require_data, staged, write_results
from prune import Budget, downstream, expected, ofa_pretrain, prepare_base

from distilprune.evaluate import classification_metrics, predict_texts
from distilprune.jobs.common import prepare_data
from distilprune.jobs.shrink import shrink_dir
from distilprune.models.loading import count_parameters, load_classifier, load_tokenizer
from distilprune.prune import PruneConfig
from distilprune.reporting.formatting import markdown_table

BASE = "minilm-l6"
COLUMNS = ["variant", "heads_removed", "neurons_removed_per_layer", "parameters", "parameter_ratio",
           "accuracy", "f1", "retention", "best_step", "train_seconds", "predict_seconds"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=WORK / "structured", help="stage directory (resumable)")
    parser.add_argument("--name", default="structured", help="results file stem")
    parser.add_argument("--heads", type=float, default=0.25, help="share of all attention heads removed")
    parser.add_argument("--neurons", type=float, default=0.5, help="share of each layer's FFN neurons cut")
    parser.add_argument("--head-steps", type=int, default=300, help="MLM head fit")
    parser.add_argument("--gd-steps", type=int, default=150)
    parser.add_argument("--gd-lr", type=float, default=1e-4)
    parser.add_argument("--gd-cos-layers", choices=("last", "all"), default="last")
    parser.add_argument("--ft-steps", type=int, default=609, help="fine-tuning steps of (a) and (b)")
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--dense-steps", type=int, help="dense fine-tune steps (default: --ft-steps)")
    parser.add_argument("--dense-lr", type=float, help="dense fine-tune learning rate (default: --ft-lr)")
    parser.add_argument("--task-kd", action="store_true",
                        help="task-distil (a) and (b) from the dense fine-tune (default: labels only)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the fine-tunings")
    return parser.parse_args()


def shrink_stage(budget: Budget, out: Path, heads: float, neurons: float) -> dict:
    """(b): the budget's dense fine-tune shrunk post hoc (``distilprune shrink``)."""
    def run() -> dict | None:
        shrink_dir(budget.out / "dense", out, heads, neurons, overwrite=True)
        return load_summary(out)

    return staged(out, run, expected(budget.dense_ft_steps, budget.dense_ft_lr, seed=budget.seed))


def evaluate(model_dir: Path, texts: list[str], labels: list[int]) -> dict:
    """Parameters and validation metrics of a saved classifier, and the seconds its predictions took."""
    model, tokenizer = load_classifier(model_dir), load_tokenizer(model_dir)
    start = time.perf_counter()
    logits = predict_texts(model, tokenizer, texts, data_config(False).max_length)
    return {"parameters": count_parameters(model), "predict_seconds": time.perf_counter() - start,
            **classification_metrics(labels, logits)}


def row(variant: str, measured: dict, dense: dict, shrink: dict | None = None,
        summary: dict | None = None, train_seconds: float | None = None) -> dict:
    """One result row; ``summary`` is the variant's training run (none for the shrunk-only model)."""
    return {"variant": variant, "parameters": measured["parameters"],
            "parameter_ratio": measured["parameters"] / dense["parameters"],
            "heads_removed": sum(len(v) for v in (shrink or {}).get("heads_removed", {}).values()),
            "neurons_removed_per_layer": (shrink or {}).get("neurons_removed_per_layer", 0),
            "accuracy": measured["accuracy"], "f1": measured["f1"],
            "retention": measured["accuracy"] / dense["accuracy"],
            "best_step": (((summary or {}).get("train") or {}).get("best") or {}).get("step"),
            "train_seconds": train_seconds, "predict_seconds": measured["predict_seconds"]}


def main() -> None:
    args = parse_args()
    require_data()
    torch.set_num_threads(args.threads)
    budget = Budget(out=args.work, gd_steps=args.gd_steps, ft_steps=args.ft_steps, gd_lr=args.gd_lr,
                    ft_lr=args.ft_lr, gd_cos_layers=args.gd_cos_layers, task_cos=0.0,
                    dense_steps=args.dense_steps, dense_lr=args.dense_lr, seed=args.seed,
                    task_kd=args.task_kd)
    prune = PruneConfig(method="structured", heads=args.heads, neurons=args.neurons,
                        start_fraction=0.0, end_fraction=0.7, frequency=10)
    tag = f"structured-h{args.heads:.2f}-n{args.neurons:.2f}"
    base = prepare_base(BASE, args.head_steps, args.work)
    dense = downstream(budget, "dense", base.dense, distill=False, steps=budget.dense_ft_steps,
                       lr=budget.dense_ft_lr)
    gd = ofa_pretrain(base, budget, prune, tag)
    ofa = downstream(budget, f"ofa-{tag}", args.work / f"gd-{tag}")
    shrunk_dir = args.work / f"shrunk-h{args.heads:.2f}-n{args.neurons:.2f}"
    shrunk = shrink_stage(budget, shrunk_dir, args.heads, args.neurons)
    post = downstream(budget, f"posthoc-{tag}", shrunk_dir)

    val = prepare_data(data_config(False)).val
    measured = {name: evaluate(args.work / name, val.texts, val.labels)
                for name in ("dense", f"ofa-{tag}", shrunk_dir.name, f"posthoc-{tag}")}
    base_row, dense_seconds = measured["dense"], dense["train"]["seconds"]
    rows = [
        row("dense (FT)", base_row, base_row, summary=dense, train_seconds=dense_seconds),
        row("(a) structured Prune OFA", measured[f"ofa-{tag}"], base_row, gd["shrink"], ofa,
            gd["train"]["seconds"] + ofa["train"]["seconds"]),
        row("(b0) post-hoc shrink, no recovery", measured[shrunk_dir.name], base_row, shrunk["shrink"]),
        row("(b) post-hoc shrink + recovery FT", measured[f"posthoc-{tag}"], base_row, shrunk["shrink"],
            post, dense_seconds + post["train"]["seconds"]),
    ]
    report(args, budget, rows)


def report(args: argparse.Namespace, budget: Budget, rows: list[dict]) -> None:
    """``results/<name>.{json,md}``."""
    command = " ".join(["python benchmarks/structured.py", *sys.argv[1:]])
    recipe = ("task-distilled from the dense fine-tune (T=2, 0.5 soft + 0.5 hard)" if budget.task_kd
              else "on the labels only")
    payload = {"benchmark": "structured", "base": BASE, "threads": args.threads,
               "targets": {"heads": args.heads, "neurons": args.neurons},
               "budgets": {"mlm_head_steps": args.head_steps, "general_distillation_steps": budget.gd_steps,
                           "general_distillation_lr": budget.gd_lr, "finetune_steps": budget.ft_steps,
                           "finetune_lr": budget.ft_lr, "dense_finetune_steps": budget.dense_ft_steps,
                           "dense_finetune_lr": budget.dense_ft_lr, "batch_size": 32,
                           "task_kd": budget.task_kd, "finetune_seed": budget.seed,
                           "schedule": "cubic, 0 -> target over the first 70% of the distillation "
                                       "steps, masks updated every 10 steps"},
               "rows": rows, "command": command}
    md = (f"# Structured Prune OFA vs post-hoc shrinking ({BASE}, disaster tweets validation)\n\n"
          + markdown_table(rows, COLUMNS)
          + f"\nBoth remove {args.heads:.0%} of the attention heads (ranked across layers, at least one "
          f"kept per layer) and {args.neurons:.0%} of every layer's FFN neurons, by weight magnitude. "
          f"(a) masked-LM distillation from the dense MiniLM, {budget.gd_steps} steps x 32 texts "
          f"(seq <= 64, lr {budget.gd_lr:g}), pruning on the cubic schedule (0 -> target over the "
          "first 70 % of the steps, masks every 10 steps), then the units are removed; (b) the dense "
          f"fine-tune ({budget.dense_ft_steps} steps, lr {budget.dense_ft_lr:g}) shrunk post hoc. "
          f"Both then fine-tuned {budget.ft_steps} steps (batch 32, lr {budget.ft_lr:g}, seed "
          f"{budget.seed}) {recipe}, structure fixed; best per-epoch checkpoint. `train_seconds`: "
          "training wall time including the stages a variant builds on (a: distillation + "
          "fine-tuning; b: dense fine-tune + recovery; the MLM head fit is not counted); "
          f"`predict_seconds`: one pass over the validation set (batch 64, {args.threads} thread(s), "
          "PyTorch fp32; indicative). "
          f"Command: `{command}`.\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    main()
