"""Speed and size benchmark (issue: quantization, export and real CPU speed).

In one run, each model in its own process, same inputs (seq 128), same threads:
12L MPNet teacher fp32 (PyTorch), its 6L/768H distilled student fp32, the 6L/384H MiniLM dense
and 90% sparse (Prune OFA, ``prune.py``) fp32, and the compressed sparse models: torch dynamic
int8, ONNX Runtime post-training int8, QAT int8 (mask locked) exported to ONNX int8, and the
sparse model structurally shrunk (heads and FFN neurons removed, recovered, ONNX int8).
Accuracy on the disaster validation split; size on disk of each model and of the compact
sparse int8 storage. Needs the models of ``finetune.py``, ``distill.py`` and ``prune.py``.

    python benchmarks/speed.py [--threads 2] [--qat-steps 100] [--prune-work DIR] [--sparse NAME]

The compressed models are ``recipes/speed.yaml``'s stages, run by ``distilprune run``'s engine in
``benchmarks/work/speed/<prune work>-<sparse>`` (finished stages are skipped, a changed budget
re-runs what it changes). QAT fine-tunes the sparse model with its mask locked, task-distilled
from the teacher it was distilled from (recorded in its ``distilprune.json``). The targets are
judged on the best *sparse* compressed model; the best compressed model of any kind is reported
too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
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
from distilprune.jobs.common import prepare_data
from distilprune.jobs.graph import GraphRecipe, run_graph
from distilprune.jobs.staging import read_record

RECIPE = ROOT / "benchmarks" / "recipes" / "speed.yaml"
EXPORTS = ("small-int8-onnx", "sparse-fp32-onnx", "sparse-ptq-int8-onnx", "sparse-qat-int8-onnx",
           "sparse-shrunk-int8-onnx")
SPARSE_INT8 = ("sparse-ptq-int8-onnx", "sparse-qat-int8-onnx", "sparse-static-int8-onnx",
               "sparse-shrunk-int8-onnx")


def best_compressed(rows: list[dict], candidates: list[dict] | None = None,
                    min_retention: float = 0.98) -> dict:
    """The fastest of ``candidates`` (default: all but the teacher, the first row) at batch 8 keeping
    ``min_retention`` of the teacher's accuracy; the most accurate one if none keeps it."""
    teacher, candidates = rows[0], candidates or rows[1:]
    keep = [r for r in candidates if r["accuracy"] >= min_retention * teacher["accuracy"]]
    best = (min(keep, key=lambda r: r["latency"]["8"]["p50_ms"]) if keep
            else max(candidates, key=lambda r: r["accuracy"]))
    return {"name": best["name"], "kept_accuracy": bool(keep), "accuracy": best["accuracy"],
            "accuracy_retention": best["accuracy"] / teacher["accuracy"],
            "speedup_b8": teacher["latency"]["8"]["p50_ms"] / best["latency"]["8"]["p50_ms"],
            "speedup_b1": teacher["latency"]["1"]["p50_ms"] / best["latency"]["1"]["p50_ms"],
            "size_ratio": teacher["size_bytes"] / best["size_bytes"],
            "meets_targets": bool(best["accuracy"] >= min_retention * teacher["accuracy"]
                                  and teacher["latency"]["8"]["p50_ms"] >= 10 * best["latency"]["8"]["p50_ms"]
                                  and teacher["size_bytes"] >= 10 * best["size_bytes"])}


def rows_by_spec(models: list[str], rows: list[dict]) -> dict[str, dict]:
    """Each model spec's benchmark row (rows come in ``models`` order; their names may have been
    lengthened to stay unique, so rows are looked up by spec, not by name)."""
    return dict(zip(models, rows, strict=True))


def best_line(best: dict, what: str) -> str:
    how = ("the fastest at batch 8 with >= 98% of the teacher's accuracy" if best["kept_accuracy"]
           else "none keeps 98% of the teacher's accuracy; the most accurate")
    return (f"\n{what} ({how}): `{best['name']}`: accuracy {best['accuracy']:.4f} "
            f"({best['accuracy_retention']:.2%} of the teacher's), "
            f"{best['speedup_b8']:.1f}x faster at batch 8 ({best['speedup_b1']:.1f}x at batch 1), "
            f"{best['size_ratio']:.1f}x smaller on disk; targets (10x, 10x, 98%) "
            f"{'met' if best['meets_targets'] else 'NOT met'}.\n")


def task_distillation(model: Path) -> dict[str, Any]:
    """The teacher and loss ``model`` was task-distilled with (its ``distilprune.json``) as a
    finetune stage's settings; none if it had no teacher."""
    kd = (load_summary(model) or {}).get("distillation") or {}
    return {"teacher": kd["teacher"], "loss": {k: kd[k] for k in ("temperature", "alpha_soft", "alpha_hard")}
            } if kd else {}


def extra_stage(model: Path) -> str:
    """An extra sparse model's ONNX Runtime dynamic int8 export stage (beside its fp32 row): the
    recipe's ``sparse-ptq-int8-onnx`` for that model."""
    return f"{model.parent.name}-{model.name}-ptq-int8-onnx"


def budget(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The stages' settings that the budget options set, by stage name."""
    return {"sparse-qat": {"train": {"max_steps": args.qat_steps, "lr": args.qat_lr,
                                     "eval_every": args.qat_eval_every}},
            "sparse-shrunk-raw": {"heads": args.shrink_heads, "neurons": args.shrink_neurons},
            "sparse-shrunk": {"train": {"max_steps": args.shrink_steps}}}


def build_recipe(args: argparse.Namespace, models: dict[str, Path], extras: list[Path],
                 split: dict[str, Path]) -> GraphRecipe:
    """``recipes/speed.yaml`` with this run's models (absolute paths), extra sparse rows, budget,
    the sparse model's task distillation and ``--set``."""
    data = load_yaml(RECIPE)
    stages, sizes, kd = data["stages"], budget(args), task_distillation(models["sparse"])
    overrides: dict[str, dict[str, Any]] = {}
    for name, body in stages.items():
        overrides[name] = split_settings(body, split) | sizes.get(name, {})
        if "model" in body:  # the sparse model's stages, and the small dense model's export
            overrides[name]["model"] = str(models["small" if name.startswith("small") else "sparse"])
        if body["kind"] == "finetune":
            overrides[name] |= kd
    for extra in extras:
        stages[extra_stage(extra)] = stages["sparse-ptq-int8-onnx"]
        overrides[extra_stage(extra)] = overrides["sparse-ptq-int8-onnx"] | {"model": str(extra)}
    return graph_recipe(data, {"stages": overrides, "out": str(args.work)}, args)


def trained_steps(model: Path) -> str:
    steps = (load_summary(model) or {}).get("train", {}).get("steps")
    return f"{steps} steps" if steps else "?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat-steps", type=int, default=100)
    parser.add_argument("--qat-lr", type=float, default=1e-5)
    parser.add_argument("--qat-eval-every", type=int, default=25,
                        help="QAT evaluates every N steps and keeps the best (fake-quantized) weights")
    parser.add_argument("--prune-work", type=Path, default=WORK / "prune",
                        help="stage directory of benchmarks/prune.py holding --sparse and --dense")
    parser.add_argument("--sparse", default="ofa-block-0.90", help="sparse model under --prune-work")
    parser.add_argument("--extra-sparse", nargs="*", default=[], metavar="NAME",
                        help="more sparse models under --prune-work (or ../<other work>/NAME): "
                             "fp32 and ONNX dynamic int8 rows each")
    parser.add_argument("--dense", default="dense", help="its dense counterpart under --prune-work")
    parser.add_argument("--student", default="student-c-gd-td", help="model under benchmarks/work/distill")
    parser.add_argument("--small", default="minilm-l6-raw",
                        help="dense small model under benchmarks/work/finetune (exported to ONNX int8)")
    parser.add_argument("--shrink-heads", type=float, default=0.25,
                        help="fraction of attention heads physically removed from the sparse model")
    parser.add_argument("--shrink-neurons", type=float, default=0.5,
                        help="fraction of FFN neurons physically removed from the sparse model")
    parser.add_argument("--shrink-steps", type=int, default=406, help="recovery fine-tuning after shrinking")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--work", type=Path,
                        help="stage directory (default benchmarks/work/speed/<prune work>-<sparse>)")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override any recipe key, dotted (stages.sparse-qat.train.lr=2e-5)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="train and export the compressed models, then stop (benchmark them later)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    require_data()
    teacher = WORK / "finetune" / "mpnet-base-raw"
    student = WORK / "distill" / args.student
    sparse, dense = args.prune_work / args.sparse, args.prune_work / args.dense
    small = WORK / "finetune" / args.small
    extras = [args.prune_work / name for name in args.extra_sparse]
    for path in (teacher, student, small, dense, sparse, *extras):
        if load_summary(path) is None:
            raise SystemExit(f"missing {path}: run the finetune / distill / prune benchmarks first")
    args.work = args.work or WORK / "speed" / f"{args.prune_work.name}-{args.sparse}"  # per sparse model
    out = args.work
    data = prepare_data(data_config(False))
    val = data.val
    split = write_split(out / "data", data)
    run_graph(build_recipe(args, {"sparse": sparse, "small": small}, extras, split))
    static = out / "sparse-static-int8-onnx"
    compact = read_record(out / "sparse-qat-compact")["summary"]
    extra_rows = [path for extra in extras for path in (extra, out / extra_stage(extra))]
    if args.prepare_only:
        return
    from distilprune.benchmark import run_benchmark

    models = [str(teacher), str(student), str(small), str(dense), str(sparse), f"{sparse}@int8",
              *(str(out / n) for n in EXPORTS), str(static), *map(str, extra_rows)]
    report = run_benchmark(models, val.texts, val.labels, RESULTS / "speed_raw", threads=args.threads,
                           batch_sizes=(1, 8), seq_len=128, repeats=args.repeats)
    rows = report["models"]
    row_of = rows_by_spec(models, rows)
    int8_specs = {*(str(out / n) for n in SPARSE_INT8), f"{sparse}@int8", *map(str, extra_rows[1::2])}
    sparse_int8 = [row_of[spec] for spec in models if spec in int8_specs]
    best_sparse, best = best_compressed(rows, sparse_int8), best_compressed(rows)
    teacher_bytes = sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    command = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
    payload = {"benchmark": "speed", "threads": args.threads, "best_sparse_compressed": best_sparse,
               "best_compressed": best, "report": report,
               "compact_storage": {**{k: compact[k] for k in ("compact_bytes", "dense_bytes", "sparsity")},
                                   "teacher_bytes": teacher_bytes,
                                   "teacher_over_compact": teacher_bytes / compact["compact_bytes"]},
               "command": command}
    ratio = teacher_bytes / compact["compact_bytes"]
    md = (Path(report["files"]["md"]).read_text()
          + f"\nRows: `{teacher.name}` 12L/768H teacher; `{student.name}` its 6L/768H distilled student; "
          f"`{small.name}` MiniLM 6L/384H fine-tuned ({trained_steps(small)}, `finetune.py`), "
          f"`small-int8-onnx` its ONNX Runtime dynamic int8; `{dense.name}` / `{sparse.name}` MiniLM "
          f"fine-tuned dense ({trained_steps(dense)}) / Prune-OFA sparse ({trained_steps(sparse)}, "
          "`prune.py`); `@int8` = torch dynamic int8; `sparse-fp32-onnx` = ONNX Runtime fp32; "
          "`sparse-ptq-int8-onnx` / `sparse-static-int8-onnx` = ONNX Runtime post-training dynamic / static "
          f"(calibrated) int8; `sparse-qat-int8-onnx` = {args.qat_steps} QAT steps (lr {args.qat_lr:g}, the "
          f"best of evaluations every {args.qat_eval_every} steps; mask locked, "
          "task-distilled from the sparse model's teacher), then ONNX int8; `sparse-shrunk-int8-onnx` = "
          f"the sparse model with {args.shrink_heads:.0%} of its heads and {args.shrink_neurons:.0%} of its "
          f"FFN neurons removed, {args.shrink_steps} recovery steps (mask locked, task-distilled), then "
          "ONNX dynamic int8"
          + "".join(f"; `{row_of[str(onnx)]['name']}`: `{row_of[str(fp32)]['name']}` (`prune.py`, "
                    f"{trained_steps(fp32)}) as ONNX Runtime dynamic int8"
                    for fp32, onnx in zip(extra_rows[::2], extra_rows[1::2], strict=True)) + ".\n"
          + best_line(best_sparse, "Best sparse compressed model (targets judged here)")
          + best_line(best, "Best compressed model of any kind")
          + f"\nCompact sparse int8 storage of the QAT model: {compact['compact_bytes'] / 1e6:.1f} MB "
          f"vs teacher {teacher_bytes / 1e6:.1f} MB ({ratio:.1f}x smaller)."
          f"\nCommand: `{command}`.\n")
    write_results("speed", payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
