"""Prune Once for All benchmark on the disaster tweets (issue: Prune OFA).

Same validation split as ``finetune.py``. For 80 / 85 / 90% sparsity, unstructured and 1x4
blocks, in one run:
(a) Prune OFA: the model is pruned on the cubic schedule *during* masked-LM distillation from its
    dense self (``gd_steps``), then fine-tuned on the task with its mask locked (``ft_steps``);
(b) downstream GMP: the dense pre-trained model is pruned on the same schedule *during*
    fine-tuning (same ``ft_steps``).
The dense baseline is the dense pre-trained model fine-tuned with the same budget; both sparse
variants are task-distilled from it while fine-tuning. The most sparse models run first (the
speed benchmark needs ``ofa-block-0.90``).

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
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from common import WORK, data_config, load_summary, require_data, result_path, staged, write_results

from distilprune.io import save_png
from distilprune.jobs.distill import (
    CorpusConfig,
    DistillLoss,
    GeneralDistillConfig,
    MLMHeadConfig,
    TaskLoss,
    fit_mlm_head,
    general_distill,
    task_finetune,
)
from distilprune.jobs.finetune import FinetuneConfig
from distilprune.prune import PruneConfig
from distilprune.reporting.formatting import markdown_table
from distilprune.train import TrainConfig

DISTILL = WORK / "distill"
CORPUS = CorpusConfig(max_length=64, heldout=500, seed=0)
SPARSITIES = (0.8, 0.85, 0.9)
STUDENT_LAYERS = 6  # all of MiniLM's layers; half of the 12L MPNet teacher's
KD_LOSS = TaskLoss(temperature=2.0, alpha_soft=0.5, alpha_hard=0.5)  # teacher: the dense fine-tune
METHODS = ("block", "unstructured")


def schedule(method: str, sparsity: float, scope: str = "layer") -> PruneConfig:
    return PruneConfig(method=method, final_sparsity=sparsity, block_size=4, start_fraction=0.0,
                       end_fraction=0.7, frequency=10, scope=scope)


@dataclass(frozen=True)
class Budget:
    """Steps, learning rates and loss options shared by every cell of one run."""

    out: Path
    gd_steps: int
    ft_steps: int
    gd_lr: float
    ft_lr: float
    gd_cos_layers: str
    task_cos: float
    kd_teacher: Path | None = None  # default: the dense fine-tune of this run
    dense_steps: int | None = None  # default: ft_steps
    dense_lr: float | None = None  # default: ft_lr
    seed: int = 42  # of the fine-tunings (the sparse pre-trainings always use 42)
    scope: str = "layer"  # pruning threshold per tensor ("layer") or across all ("global")
    gd_alpha_ce: float | None = None  # default: the base's soft-target weight
    task_kd: bool = True  # sparse fine-tunes task-distilled from ``teacher`` (else labels only)

    @property
    def dense_ft_steps(self) -> int:
        return self.dense_steps or self.ft_steps

    @property
    def dense_ft_lr(self) -> float:
        return self.dense_lr or self.ft_lr

    @property
    def teacher(self) -> Path:
        """The fine-tuned classifier the sparse models are task-distilled from."""
        return self.kd_teacher or self.out / "dense"

    def gd_loss(self, base_loss: DistillLoss) -> DistillLoss:
        """The base's sparse pre-training loss with this run's cosine layers (and soft-target weight)."""
        alpha_ce = base_loss.alpha_ce if self.gd_alpha_ce is None else self.gd_alpha_ce
        return dataclasses.replace(base_loss, cos_layers=self.gd_cos_layers, alpha_ce=alpha_ce)

    def task_loss(self) -> TaskLoss:
        """Task distillation from the dense fine-tune, plus the optional every-layer cosine."""
        return dataclasses.replace(KD_LOSS, alpha_cos=self.task_cos, cos_layers="all")


def train_config(steps: int, lr: float, seed: int = 42) -> TrainConfig:
    return TrainConfig(max_steps=steps, lr=lr, batch_size=32, patience=None, seed=seed, warmup_ratio=0.05)


def expected(steps: int, lr: float, prune: PruneConfig | None = None, teacher: Path | None = None,
             seed: int = 42, task_cos: float = 0.0) -> dict:
    """What a reused stage must have been made with (``common.staged`` checks it); ``teacher=None``
    asks for a stage made without task distillation, else one distilled with ``task_cos``."""
    keys: dict = {"config.train.max_steps": steps, "config.train.lr": lr, "config.train.seed": seed,
                  "distillation.teacher": teacher}
    if teacher is not None:
        keys["distillation.alpha_cos"] = task_cos
    if prune is not None:
        keys |= {"config.prune.method": prune.method, "config.prune.final_sparsity": prune.final_sparsity}
        if prune.method == "structured":
            keys |= {"config.prune.heads": prune.heads, "config.prune.neurons": prune.neurons}
        if prune.scope != "layer":  # stages made before the option existed are layer-scoped
            keys["config.prune.scope"] = prune.scope
    return keys


@dataclass(frozen=True)
class Base:
    """Where pruning starts: the masked-LM teacher and the dense pre-trained model."""

    name: str
    mlm_teacher: Path
    dense: Path | str
    loss: DistillLoss


def prepare_base(name: str, head_steps: int, out: Path) -> Base:
    """Fit MiniLM's MLM head (once), or reuse the distillation benchmark's MPNet teacher + student."""
    if name == "mpnet-student":
        if load_summary(DISTILL / "student-gd") is None:
            raise SystemExit("run benchmarks/distill.py --stages mpnet-mlm,student-gd first")
        return Base(name, DISTILL / "mpnet-mlm", DISTILL / "student-gd", DistillLoss())
    mlm = out / f"{name}-mlm"
    staged(mlm, lambda: fit_mlm_head(MLMHeadConfig(
        teacher=name, out=str(mlm), corpus=CORPUS, overwrite=True,
        train=TrainConfig(max_steps=head_steps, lr=2e-3, batch_size=32, patience=None, seed=0))))
    # The fitted head predicts only ~8% of masked tokens: its MLM loss (~7 nats) would drag the
    # encoder towards a poor head, so the student keeps the soft-target KL and the hidden cosine.
    return Base(name, mlm, name, DistillLoss(alpha_mlm=0.0))


def ofa_pretrain(base: Base, budget: Budget, prune: PruneConfig, tag: str) -> dict:
    """Masked-LM distillation of the base into its copy pruned by ``prune``, in ``gd-<tag>``."""
    out, loss = budget.out / f"gd-{tag}", budget.gd_loss(base.loss)
    cfg = GeneralDistillConfig(teacher=str(base.mlm_teacher), out=str(out),
                               student_layers=STUDENT_LAYERS, corpus=CORPUS, loss=loss,
                               train=train_config(budget.gd_steps, budget.gd_lr), prune=prune, overwrite=True)
    return staged(out, lambda: general_distill(cfg),
                  expected(budget.gd_steps, budget.gd_lr, prune) | {"config.loss.alpha_ce": loss.alpha_ce})


def downstream(budget: Budget, name: str, model: Path | str, lock: bool = False,
               prune: PruneConfig | None = None, distill: bool = True, steps: int | None = None,
               lr: float | None = None) -> dict:
    """Fine-tune on the tweets (``steps`` and ``lr``, default the budget's); with ``distill``,
    task-distilled from the budget's teacher."""
    out = budget.out / name
    steps, lr = steps or budget.ft_steps, lr or budget.ft_lr
    cfg = FinetuneConfig(model=str(model), out=str(out), data=data_config(False),
                         train=train_config(steps, lr, budget.seed), lock_sparsity=lock,
                         prune=prune, overwrite=True)
    teacher = budget.teacher if distill and budget.task_kd else None
    return staged(out, lambda: task_finetune(cfg, teacher, budget.task_loss()),
                  expected(steps, lr, prune, teacher, budget.seed, budget.task_cos))


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
    require_data()
    torch.set_num_threads(args.threads)
    budget = Budget(out=args.work, gd_steps=args.gd_steps, ft_steps=args.ft_steps, gd_lr=args.gd_lr,
                    ft_lr=args.ft_lr, gd_cos_layers=args.gd_cos_layers, task_cos=args.task_cos,
                    kd_teacher=args.kd_teacher, dense_steps=args.dense_steps, dense_lr=args.dense_lr,
                    seed=args.seed, scope=args.scope, gd_alpha_ce=args.gd_alpha_ce,
                    task_kd=not args.no_task_kd)
    base = prepare_base(args.base, args.head_steps, args.work)
    if args.gd_only:
        for method, sparsity in cells(args.only):
            ofa_pretrain(base, budget, schedule(method, sparsity, budget.scope), f"{method}-{sparsity:.2f}")
        return
    dense = downstream(budget, "dense", base.dense, distill=False, steps=budget.dense_ft_steps,
                       lr=budget.dense_ft_lr)
    dense_acc = dense["metrics"]["accuracy"]
    rows = [row("dense (FT)", "-", 0.0, dense, dense_acc, dense["train"]["seconds"])]
    missing = []
    if "kd" in args.variants and not (args.report_only and load_summary(args.work / "dense-kd") is None):
        control = downstream(budget, "dense-kd", base.dense)  # the sparse cells' recipe without pruning
        rows.append(row(KD_CONTROL, "-", 0.0, control, dense_acc, control["train"]["seconds"]))
    per_cell = [v for v in args.variants if v != "kd"]  # the kd control is one dense row, not a cell
    for method, sparsity in cells(args.only):
        tag = f"{method}-{sparsity:.2f}"
        variants = per_cell
        if args.report_only:  # report the finished stages, train nothing
            variants = [v for v in variants if load_summary(args.work / f"{v}-{tag}") is not None]
            missing += [f"{v}-{tag}" for v in per_cell if v not in variants]
        if "ofa" in variants:
            gd = ofa_pretrain(base, budget, schedule(method, sparsity, budget.scope), tag)
            ofa = downstream(budget, f"ofa-{tag}", args.work / f"gd-{tag}", lock=True)
            rows.append(row("(a) Prune OFA", method, sparsity, ofa, dense_acc,
                            gd["train"]["seconds"] + ofa["train"]["seconds"]))
        if "gmp" in variants:
            gmp = downstream(budget, f"gmp-{tag}", base.dense, prune=schedule(method, sparsity, budget.scope))
            rows.append(row("(b) GMP on task", method, sparsity, gmp, dense_acc, gmp["train"]["seconds"]))
    rows[1:] = sorted(rows[1:], key=lambda r: (r["variant"], r["method"], r["target_sparsity"]))
    report(args, budget, base, rows, missing)


def report(args: argparse.Namespace, budget: Budget, base: Base, rows: list[dict],
           missing: list[str]) -> None:
    """``results/<name>.{json,md}`` and the accuracy-vs-sparsity PNG."""
    plot(rows, result_path(args.name, "_accuracy.png"))
    gd_loss, task_loss = budget.gd_loss(base.loss), budget.task_loss()
    dense_steps = budget.dense_ft_steps
    checks = target_checks(rows)
    payload = {"benchmark": "prune", "threads": args.threads, "base": args.base,
               "budgets": {"general_distillation_steps": budget.gd_steps, "finetune_steps": budget.ft_steps,
                           "dense_finetune_steps": dense_steps, "dense_finetune_lr": budget.dense_ft_lr,
                           "kd_teacher": str(budget.teacher) if budget.task_kd else None,
                           "general_distillation_lr": budget.gd_lr, "finetune_lr": budget.ft_lr,
                           "mlm_head_steps": args.head_steps, "batch_size": 32,
                           "schedule": "cubic, 0 -> target over the first 70% of steps, "
                                       "masks updated every 10 steps", "scope": budget.scope,
                           "finetune_seed": budget.seed},
               "general_distillation_loss": vars(gd_loss), "finetune_kd": vars(task_loss),
               "rows": rows, "not_run": missing, "targets": checks,
               "command": " ".join(["python benchmarks/prune.py", *sys.argv[1:]])}
    cos = f"; plus {budget.task_cos:g} x every-layer cosine to it" if budget.task_cos else ""
    threshold = "one global magnitude threshold" if budget.scope == "global" else "a threshold per tensor"
    md = (f"# Prune OFA vs downstream GMP ({args.base}, disaster tweets validation)\n\n"
          + markdown_table(rows, ["variant", "method", "target_sparsity", "measured_sparsity",
                                  "accuracy", "f1", "retention", "best_step", "seconds"])
          + f"\nBudgets: {args.threads} thread(s); (a) masked-LM distillation {budget.gd_steps} steps x 32 "
          f"texts (seq <= 64, lr {budget.gd_lr:g}) with pruning, then fine-tuning {budget.ft_steps} steps "
          f"with the mask locked; (b) fine-tuning {budget.ft_steps} steps with pruning; batch 32, "
          f"lr {budget.ft_lr:g}, same schedule (cubic, 0 -> target over the first 70% of steps, masks "
          f"updated every 10 steps, {threshold}); fine-tuning seed "
          f"{budget.seed}; dense fine-tune {dense_steps} steps at lr {budget.dense_ft_lr:g}; "
          "both sparse variants are "
          + (f"task-distilled from `{budget.teacher.name}` (T=2, 0.5 soft + 0.5 hard{cos}); "
             if budget.task_kd else "fine-tuned on the labels only (no task distillation); ")
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
    main()
