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

The stages are ``recipes/structured.yaml``'s, run by ``distilprune run``'s engine with this
script's budget (finished stages are skipped); a ``prune.py`` work directory's MLM head and dense
fine-tune made with the same budget can be linked in (``ln -s ../prune609/minilm-l6-mlm
../prune609/dense WORK/``).

    python benchmarks/structured.py --threads 1 --gd-steps 150 --ft-steps 609 --ft-lr 1e-4 \\
        --dense-steps 609 --heads 0.25 --neurons 0.5
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DISASTER_TRAIN,
    ROOT,
    WORK,
    data_config,
    graph_recipe,
    load_summary,
    require_data,
    run_main,
    write_results,
)

from distilprune.config import load_yaml
from distilprune.evaluate import classification_metrics, predict_texts
from distilprune.jobs.common import prepare_data
from distilprune.jobs.graph import GraphRecipe, run_graph
from distilprune.models.loading import count_parameters, load_classifier, load_tokenizer
from distilprune.reporting.formatting import markdown_table

BASE = "minilm-l6"
RECIPE = ROOT / "benchmarks" / "recipes" / "structured.yaml"
TASK_LOSS = {"temperature": 2.0, "alpha_soft": 0.5, "alpha_hard": 0.5, "alpha_cos": 0.0, "cos_layers": "all"}
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
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override any recipe key, dotted (stages.dense.train.warmup_ratio=0.1)")
    return parser.parse_args()


def retag(stages: dict[str, Any], heads: float, neurons: float) -> dict[str, Any]:
    """The recipe's stages for ``heads`` / ``neurons``: its structured stages renamed (and rewired)
    from the recipe's shares to these."""
    pruned = next(body for name, body in stages.items() if name.startswith("gd-"))["prune"]
    old, new = (f"h{h:.2f}-n{n:.2f}" for h, n in ((pruned["heads"], pruned["neurons"]), (heads, neurons)))
    renamed = {}
    for name, body in stages.items():
        body = copy.deepcopy(body)
        body["from"] = {key: value.replace(old, new) for key, value in (body.get("from") or {}).items()}
        if "prune" in body:
            body["prune"] |= {"heads": heads, "neurons": neurons}
        if body["kind"] == "shrink":
            body |= {"heads": heads, "neurons": neurons}
        renamed[name.replace(old, new)] = body
    return renamed


def build_recipe(args: argparse.Namespace) -> tuple[GraphRecipe, str]:
    """``recipes/structured.yaml`` for this run's shares, budget and ``--set``; and the run's tag."""
    data = load_yaml(RECIPE)
    stages = retag(data["stages"], args.heads, args.neurons)
    tag = f"h{args.heads:.2f}-n{args.neurons:.2f}"
    shared = {"data": {"train": str(DISASTER_TRAIN)}}  # the shared split, from any working directory
    finetune = shared | {"train": {"max_steps": args.ft_steps, "lr": args.ft_lr, "seed": args.seed}}
    if args.task_kd:  # from the dense fine-tune
        finetune |= {"from": {"teacher": "dense"}, "loss": TASK_LOSS}
    budget = {
        "minilm-l6-mlm": {"train": {"max_steps": args.head_steps}},
        "dense": shared | {"train": {"max_steps": args.dense_steps or args.ft_steps,
                                     "lr": args.dense_lr or args.ft_lr, "seed": args.seed}},
        f"gd-structured-{tag}": {"train": {"max_steps": args.gd_steps, "lr": args.gd_lr},
                                 "loss": {"cos_layers": args.gd_cos_layers}},
        f"ofa-structured-{tag}": finetune,
        f"posthoc-structured-{tag}": finetune,
    }
    run = {"stages": budget, "out": str(args.work), "threads": args.threads}
    return graph_recipe(data | {"stages": stages}, run, args), tag


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
    recipe, tag = build_recipe(args)
    run_graph(recipe)
    names = ("dense", f"gd-structured-{tag}", f"ofa-structured-{tag}", f"shrunk-{tag}",
             f"posthoc-structured-{tag}")
    dense, gd, ofa, shrunk, post = (load_summary(args.work / name) for name in names)
    val = prepare_data(data_config(False)).val
    measured = {name: evaluate(args.work / name, val.texts, val.labels)
                for name in ("dense", *names[2:])}
    base_row, dense_seconds = measured["dense"], dense["train"]["seconds"]
    rows = [
        row("dense (FT)", base_row, base_row, summary=dense, train_seconds=dense_seconds),
        row("(a) structured Prune OFA", measured[f"ofa-structured-{tag}"], base_row, gd["shrink"], ofa,
            gd["train"]["seconds"] + ofa["train"]["seconds"]),
        row("(b0) post-hoc shrink, no recovery", measured[f"shrunk-{tag}"], base_row, shrunk["shrink"]),
        row("(b) post-hoc shrink + recovery FT", measured[f"posthoc-structured-{tag}"], base_row,
            shrunk["shrink"], post, dense_seconds + post["train"]["seconds"]),
    ]
    report(args, rows)


def report(args: argparse.Namespace, rows: list[dict]) -> None:
    """``results/<name>.{json,md}``."""
    dense_steps, dense_lr = args.dense_steps or args.ft_steps, args.dense_lr or args.ft_lr
    command = " ".join(["python benchmarks/structured.py", *sys.argv[1:]])
    recipe = ("task-distilled from the dense fine-tune (T=2, 0.5 soft + 0.5 hard)" if args.task_kd
              else "on the labels only")
    payload = {"benchmark": "structured", "base": BASE, "threads": args.threads,
               "targets": {"heads": args.heads, "neurons": args.neurons},
               "budgets": {"mlm_head_steps": args.head_steps, "general_distillation_steps": args.gd_steps,
                           "general_distillation_lr": args.gd_lr, "finetune_steps": args.ft_steps,
                           "finetune_lr": args.ft_lr, "dense_finetune_steps": dense_steps,
                           "dense_finetune_lr": dense_lr, "batch_size": 32,
                           "task_kd": args.task_kd, "finetune_seed": args.seed,
                           "schedule": "cubic, 0 -> target over the first 70% of the distillation "
                                       "steps, masks updated every 10 steps"},
               "rows": rows, "command": command}
    md = (f"# Structured Prune OFA vs post-hoc shrinking ({BASE}, disaster tweets validation)\n\n"
          + markdown_table(rows, COLUMNS)
          + f"\nBoth remove {args.heads:.0%} of the attention heads (ranked across layers, at least one "
          f"kept per layer) and {args.neurons:.0%} of every layer's FFN neurons, by weight magnitude. "
          f"(a) masked-LM distillation from the dense MiniLM, {args.gd_steps} steps x 32 texts "
          f"(seq <= 64, lr {args.gd_lr:g}), pruning on the cubic schedule (0 -> target over the "
          "first 70 % of the steps, masks every 10 steps), then the units are removed; (b) the dense "
          f"fine-tune ({dense_steps} steps, lr {dense_lr:g}) shrunk post hoc. "
          f"Both then fine-tuned {args.ft_steps} steps (batch 32, lr {args.ft_lr:g}, seed "
          f"{args.seed}) {recipe}, structure fixed; best per-epoch checkpoint. `train_seconds`: "
          "training wall time including the stages a variant builds on (a: distillation + "
          "fine-tuning; b: dense fine-tune + recovery; the MLM head fit is not counted); "
          f"`predict_seconds`: one pass over the validation set (batch 64, {args.threads} thread(s), "
          "PyTorch fp32; indicative). "
          f"Command: `{command}`.\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
