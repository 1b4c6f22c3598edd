"""Prune Once for All benchmark on the disaster tweets (issue: Prune OFA).

Same validation split as ``finetune.py``. For 80 / 85 / 90% sparsity, unstructured and 1x4
blocks, in one run:
(a) Prune OFA: the model is pruned on the cubic schedule *during* masked-LM distillation from its
    dense self (``gd_steps``), then fine-tuned on the task with its mask locked (``ft_steps``);
(b) downstream GMP: the dense pre-trained model is pruned on the same schedule *during*
    fine-tuning (same ``ft_steps``).
The dense baseline is the dense pre-trained model fine-tuned with the same budget; both sparse
variants are task-distilled from it while fine-tuning. The stages are ``recipes/prune.yaml``'s,
run by ``distilprune run``'s engine with this script's budget (finished stages are skipped, a
changed budget re-runs what it changes); the script turns them into the results.

``--base minilm-l6`` (default): the packaged MiniLM (6L/384H) is both teacher and student, as in
the Prune OFA paper (BERT-base distilled into a pruned BERT-base); its MLM head is fitted first.
``--base mpnet-student``: the 6L student of ``benchmarks/distill.py --stages mpnet-mlm,student-gd`` (its
general distillation from the 12L MPNet teacher is repeated with pruning); ~4x the CPU time.

    python benchmarks/prune.py [--threads 2] [--base minilm-l6] [--gd-steps 150] [--ft-steps 203]
    python benchmarks/prune.py --work DIR --only unstructured:0.90 --variants ofa   # one cell
    python benchmarks/prune.py --work DIR --only unstructured:0.50 --variants ofa   # off the matrix
    python benchmarks/prune.py --work DIR --variants kd   # control: dense, sparse cells' recipe

Trials (each in a fresh ``--work``; link in the stages they share; ``--name trials/<stem>`` writes
``results/trials/``, summarised by ``benchmarks/trials.py``): ``--ft-lr`` / ``--dense-lr``
(sparse and dense fine-tuning rates apart), ``--gd-alpha-ce 0 --gd-cos-layers all`` (sparse
pre-training on the every-layer hidden-state cosine alone), ``--no-task-kd`` (sparse fine-tunes on
the labels only), ``--task-cos``, ``--kd-teacher``, ``--scope global``, ``--seed``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from common import (
    DISASTER_TRAIN,
    ROOT,
    WORK,
    graph_recipe,
    load_summary,
    require_data,
    result_path,
    run_main,
    write_results,
)

from distilprune.config import load_yaml
from distilprune.io import save_png
from distilprune.jobs.graph import GraphRecipe, job_config, plan, run_graph, with_upstream
from distilprune.jobs.staging import read_record
from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "prune.yaml"
DISTILL = WORK / "distill"
SPARSITIES = (0.9, 0.85, 0.8)
METHODS = ("block", "unstructured")
HEAD = "minilm-l6-mlm"


def tag(method: str, sparsity: float) -> str:
    return f"{method}-{sparsity:.2f}"


def group(name: str) -> str:
    """A stage's group: the head, ``dense``, ``dense-kd`` or a cell's ``gd``/``ofa``/``gmp``."""
    return name if name in (HEAD, "dense", "dense-kd") else name.partition("-")[0]


def add_cell(stages: dict[str, Any], method: str, sparsity: float) -> None:
    """Add a cell off the recipe's matrix: the same method's 90 % stages at ``sparsity``."""
    new, template = tag(method, sparsity), tag(method, 0.9)
    if f"gd-{new}" in stages:
        return
    for kind in ("gd", "ofa", "gmp"):
        body = copy.deepcopy(stages[f"{kind}-{template}"])
        if "prune" in body:
            body["prune"]["final_sparsity"] = sparsity
        if kind == "ofa":
            body["from"]["model"] = f"gd-{new}"
        stages[f"{kind}-{new}"] = body


def budget_overrides(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """The stages' settings that the budget options set, by stage name."""
    data = {"train": str(DISASTER_TRAIN)}  # the shared split, from any working directory
    labels = {"data": data, "train": {"max_steps": args.ft_steps, "lr": args.ft_lr, "seed": args.seed}}
    distilled = labels | {"loss": {"alpha_cos": args.task_cos}}
    if args.kd_teacher is not None:  # a classifier made elsewhere, by its path
        distilled |= {"teacher": str(args.kd_teacher)}
    cell = labels if args.no_task_kd else distilled
    by_group = {
        HEAD: {"train": {"max_steps": args.head_steps}},
        "dense": {"data": data, "train": {"max_steps": args.dense_steps or args.ft_steps,
                                          "lr": args.dense_lr or args.ft_lr, "seed": args.seed}},
        "dense-kd": distilled,
        "gd": {"train": {"max_steps": args.gd_steps, "lr": args.gd_lr},
               "loss": {"cos_layers": args.gd_cos_layers, "alpha_ce": args.gd_alpha_ce},
               "prune": {"scope": args.scope}},
        "ofa": cell,
        "gmp": cell | {"prune": {"scope": args.scope}},
    }
    return {name: by_group[group(name)] for name in names}


def rewire(stages: dict[str, Any], args: argparse.Namespace) -> None:
    """Teacher and base choices that change a stage's ``from:`` wiring, in place."""
    for name, body in stages.items():
        sources = body["from"] = dict(body.get("from") or {})  # YAML merge keys share the mapping
        if group(name) in ("dense-kd", "ofa", "gmp") and args.kd_teacher is not None:
            sources.pop("teacher", None)
        if group(name) in ("ofa", "gmp") and args.no_task_kd:  # labels only
            sources.pop("teacher", None)
            body.pop("loss", None)
        if args.base == "mpnet-student":  # the distillation benchmark's MPNet teacher and student
            if group(name) == "gd":
                sources.pop("teacher")
                body |= {"teacher": str(DISTILL / "mpnet-mlm"), "loss": {}}  # the triple loss
            elif "model" not in sources:
                body["model"] = str(DISTILL / "student-gd")
    if args.base == "mpnet-student":
        del stages[HEAD]


def build_recipe(args: argparse.Namespace) -> GraphRecipe:
    """``recipes/prune.yaml`` with the asked cells, this run's budget, base, teacher and ``--set``."""
    data = load_yaml(RECIPE)
    for method, sparsity in cells(args.only):
        add_cell(data["stages"], method, sparsity)
    rewire(data["stages"], args)
    budget = {"stages": budget_overrides(args, list(data["stages"])), "out": str(args.work),
              "threads": args.threads}
    return graph_recipe(data, budget, args)


def reported_stages(args: argparse.Namespace) -> list[str]:
    """The stages this run reports (or, with ``--gd-only``, makes)."""
    if args.gd_only:
        return [f"gd-{tag(*cell)}" for cell in cells(args.only)]
    per_cell = [v for v in args.variants if v != "kd"]  # the kd control is one dense row, not a cell
    return (["dense"] + (["dense-kd"] if "kd" in args.variants else [])
            + [f"{v}-{tag(*cell)}" for cell in cells(args.only) for v in per_cell])


def refuse_linked_stale(recipe: GraphRecipe, names: list[str]) -> None:
    """A stage linked in from another work directory must not be remade with other inputs."""
    for name, stage in plan(recipe).items():
        record = read_record(stage.out)
        if name in names and stage.out.is_symlink() and record and record["hash"] != stage.hash:
            raise SystemExit(f"{stage.out} is linked from another work directory and was made from other "
                             "inputs; use a fresh --work")


def row(name: str, method: str, sparsity: float, summary: dict, dense_acc: float, seconds: float) -> dict:
    acc = summary["metrics"]["accuracy"]
    return {"variant": name, "method": method, "target_sparsity": sparsity,
            "measured_sparsity": summary.get("sparsity", 0.0), "accuracy": acc,
            "f1": summary["metrics"]["f1"], "retention": acc / dense_acc,
            "best_step": (summary["train"].get("best") or {}).get("step"), "seconds": seconds}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base", choices=("minilm-l6", "mpnet-student"), default="minilm-l6")
    parser.add_argument("--work", type=Path, default=WORK / "prune", help="stage directory (resumable)")
    parser.add_argument("--name", default="prune",
                        help="results file stem; trials and controls: trials/<stem> (results/trials/)")
    parser.add_argument("--head-steps", type=int, default=300, help="MLM head fit (minilm-l6 base)")
    parser.add_argument("--gd-steps", type=int, default=150)
    parser.add_argument("--ft-steps", type=int, default=203)
    parser.add_argument("--gd-lr", type=float, default=1e-4)
    parser.add_argument("--ft-lr", type=float, default=8e-5)
    parser.add_argument("--dense-steps", type=int, help="dense fine-tune steps (default: --ft-steps)")
    parser.add_argument("--dense-lr", type=float, help="dense fine-tune learning rate (default: --ft-lr)")
    parser.add_argument("--gd-cos-layers", choices=("last", "all"), default="last",
                        help="hidden-state cosine of the sparse pre-training on the last or every layer")
    parser.add_argument("--gd-alpha-ce", type=float,
                        help="soft-target (MLM head) weight of the sparse pre-training (default: the base's)")
    parser.add_argument("--no-task-kd", action="store_true",
                        help="fine-tune the sparse models on the labels only (no task distillation)")
    parser.add_argument("--task-cos", type=float, default=0.0,
                        help="weight of an every-layer cosine to the dense fine-tune while fine-tuning")
    parser.add_argument("--kd-teacher", type=Path,
                        help="fine-tuned classifier to task-distil from (any tokenizer; "
                             "default: the dense fine-tune)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="magnitude threshold per weight tensor, or one across all of them")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the fine-tunings (data order, classifier init, dropout)")
    parser.add_argument("--only", nargs="+", metavar="METHOD:SPARSITY",
                        help="run only these cells, e.g. unstructured:0.90")
    parser.add_argument("--variants", nargs="+", choices=("ofa", "gmp", "kd"), default=["ofa", "gmp"],
                        help="kd: a control, the dense model fine-tuned with the sparse cells' budget "
                             "and task distillation (no pruning)")
    parser.add_argument("--gd-only", action="store_true",
                        help="make only the sparse pre-trained models gd-<cell> (no fine-tuning, no "
                             "report): the inputs of benchmarks/tasks.py")
    parser.add_argument("--report-only", action="store_true",
                        help="report the finished cells of --work (train nothing; list the missing ones)")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override any recipe key, dotted (stages.dense.train.warmup_ratio=0.1)")
    return parser.parse_args()


def cells(only: list[str] | None) -> list[tuple[str, float]]:
    """(method, sparsity) pairs, most sparse first (the speed benchmark needs ``ofa-block-0.90``);
    ``only`` picks cells, also at sparsities outside the default matrix (e.g. ``unstructured:0.70``)."""
    if not only:
        return [(m, s) for m in METHODS for s in sorted(SPARSITIES, reverse=True)]
    wanted = set()
    for item in only:
        method, _, sparsity = item.partition(":")
        try:
            value = round(float(sparsity), 2)
        except ValueError:
            value = -1.0
        if method not in METHODS or not 0.0 < value < 1.0:
            raise SystemExit(f"--only {item!r}: expected METHOD:SPARSITY, METHOD in {METHODS}, "
                             "0 < SPARSITY < 1")
        wanted.add((method, value))
    return sorted(wanted, key=lambda cell: (METHODS.index(cell[0]), -cell[1]))


def main() -> None:
    args = parse_args()
    if args.no_task_kd and "kd" in args.variants:
        raise SystemExit("--variants kd is the task-distilled dense control: drop --no-task-kd")
    if args.base == "mpnet-student" and load_summary(DISTILL / "student-gd") is None:
        raise SystemExit("run benchmarks/distill.py --stages mpnet-mlm,student-gd first")
    require_data()
    recipe = build_recipe(args)
    names, missing = reported_stages(args), []
    if args.report_only:  # report the finished stages, train nothing (but the dense baseline)
        missing = [n for n in names[1:] if load_summary(args.work / n) is None]
        names = [n for n in names if n not in missing]
    selected = with_upstream(recipe, names if not args.report_only else ["dense"])
    refuse_linked_stale(recipe, selected)
    run_graph(recipe, selected)
    if not args.gd_only:
        report(args, recipe, results(args.work, names), missing)


def results(work: Path, names: list[str]) -> list[dict]:
    """The result rows of the finished stages ``names`` (dense first)."""
    dense = load_summary(work / "dense")
    dense_acc = dense["metrics"]["accuracy"]
    rows = [row("dense (FT)", "-", 0.0, dense, dense_acc, dense["train"]["seconds"])]
    for name in names[1:]:
        summary = load_summary(work / name)
        if name == "dense-kd":  # the sparse cells' recipe without pruning
            rows.append(row(KD_CONTROL, "-", 0.0, summary, dense_acc, summary["train"]["seconds"]))
            continue
        variant, _, cell = name.partition("-")
        method, _, sparsity = cell.rpartition("-")
        seconds = summary["train"]["seconds"]
        if variant == "ofa":
            seconds += load_summary(work / f"gd-{cell}")["train"]["seconds"]
        label = "(a) Prune OFA" if variant == "ofa" else "(b) GMP on task"
        rows.append(row(label, method, float(sparsity), summary, dense_acc, seconds))
    rows[1:] = sorted(rows[1:], key=lambda r: (r["variant"], r["method"], r["target_sparsity"]))
    return rows


def report(args: argparse.Namespace, recipe: GraphRecipe, rows: list[dict], missing: list[str]) -> None:
    """``results/<name>.{json,md}`` and the accuracy-vs-sparsity PNG."""
    plot(rows, result_path(args.name, "_accuracy.png"))
    gd_stage = next(n for n in recipe.stages if n.startswith("gd-"))
    gd_loss = job_config(recipe.stages[gd_stage], args.work)[0].loss
    task_loss = job_config(recipe.stages["dense-kd"], args.work)[1]["loss"]
    teacher = args.kd_teacher or args.work / "dense"
    task_kd = not args.no_task_kd
    dense_steps, dense_lr = args.dense_steps or args.ft_steps, args.dense_lr or args.ft_lr
    checks = target_checks(rows)
    payload = {"benchmark": "prune", "threads": args.threads, "base": args.base,
               "budgets": {"general_distillation_steps": args.gd_steps, "finetune_steps": args.ft_steps,
                           "dense_finetune_steps": dense_steps, "dense_finetune_lr": dense_lr,
                           "kd_teacher": str(teacher) if task_kd else None,
                           "general_distillation_lr": args.gd_lr, "finetune_lr": args.ft_lr,
                           "mlm_head_steps": args.head_steps, "batch_size": 32,
                           "schedule": "cubic, 0 -> target over the first 70% of steps, "
                                       "masks updated every 10 steps", "scope": args.scope,
                           "finetune_seed": args.seed},
               "general_distillation_loss": vars(gd_loss), "finetune_kd": vars(task_loss),
               "rows": rows, "not_run": missing, "targets": checks,
               "command": " ".join(["python benchmarks/prune.py", *sys.argv[1:]])}
    cos = f"; plus {args.task_cos:g} x every-layer cosine to it" if args.task_cos else ""
    threshold = "one global magnitude threshold" if args.scope == "global" else "a threshold per tensor"
    md = (f"# Prune OFA vs downstream GMP ({args.base}, disaster tweets validation)\n\n"
          + markdown_table(rows, ["variant", "method", "target_sparsity", "measured_sparsity",
                                  "accuracy", "f1", "retention", "best_step", "seconds"])
          + f"\nBudgets: {args.threads} thread(s); (a) masked-LM distillation {args.gd_steps} steps x 32 "
          f"texts (seq <= 64, lr {args.gd_lr:g}) with pruning, then fine-tuning {args.ft_steps} steps "
          f"with the mask locked; (b) fine-tuning {args.ft_steps} steps with pruning; batch 32, "
          f"lr {args.ft_lr:g}, same schedule (cubic, 0 -> target over the first 70% of steps, masks "
          f"updated every 10 steps, {threshold}); fine-tuning seed "
          f"{args.seed}; dense fine-tune {dense_steps} steps at lr {dense_lr:g}; "
          "both sparse variants are "
          + (f"task-distilled from `{teacher.name}` (T=2, 0.5 soft + 0.5 hard{cos}); "
             if task_kd else "fine-tuned on the labels only (no task distillation); ")
          + f"distillation loss α={gd_loss.alpha_ce:g}, "
          f"β={gd_loss.alpha_mlm:g}, γ={gd_loss.alpha_cos:g} (cosine on "
          f"{'every layer' if gd_loss.cos_layers == 'all' else 'the last layer'}). "
          "`best_step`: the fine-tuning step whose checkpoint (evaluated every epoch, at the "
          "final sparsity) is kept; `seconds` = training wall time (a: distillation + fine-tuning). "
          f"Plot: `{Path(args.name).name}_accuracy.png`. Command: `{payload['command']}`.\n\n"
          + "".join(f"- {c['sparsity']:.0%} sparse: best {c['best']} retains {c['retention']:.1%} of dense "
                    f"(target {c['target']:.1%}): {'met' if c['met'] else 'NOT met'}\n" for c in checks)
          + (f"- not run at this budget: {', '.join(missing)}\n" if missing else ""))
    write_results(args.name, payload, md)
    print(md)


KD_CONTROL = "(c) dense, task-distilled"
TARGETS = {0.85: 0.99, 0.9: 0.985}  # the retention targets per sparsity


def target_checks(rows: list[dict]) -> list[dict]:
    """The best sparse row at each targeted sparsity against its retention target."""
    checks = []
    for sparsity, target in TARGETS.items():
        pts = [r for r in rows[1:] if abs(r["target_sparsity"] - sparsity) < 1e-6]
        if pts:
            best = max(pts, key=lambda r: r["accuracy"])
            checks.append({"sparsity": sparsity, "target": target, "retention": best["retention"],
                           "best": f"{best['variant']} {best['method']}", "met": best["retention"] >= target})
    return checks


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against sparsity per method and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = rows[0]["accuracy"]
    ax.axhline(dense, color="gray", linestyle="--", label="dense")
    for control in (r for r in rows if r["variant"] == KD_CONTROL):
        ax.axhline(control["accuracy"], color="gray", linestyle=":", label=KD_CONTROL)
    for variant in ("(a) Prune OFA", "(b) GMP on task"):
        for method, marker in (("unstructured", "o"), ("block", "s")):
            pts = [r for r in rows if r["variant"] == variant and r["method"] == method]
            if not pts:
                continue
            ax.plot([r["target_sparsity"] for r in pts], [r["accuracy"] for r in pts], marker=marker,
                    label=f"{variant}, {method}")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    run_main(main)
