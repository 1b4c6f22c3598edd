"""Speed and size benchmark (issue: quantization, export and real CPU speed).

In one run, each model in its own process, same inputs (seq 128), same threads:
12L MPNet teacher fp32 (PyTorch), its 6L/768H distilled student fp32, the 6L/384H MiniLM dense
and 90% sparse (Prune OFA, ``prune.py``) fp32, and the compressed sparse models: torch dynamic
int8, ONNX Runtime post-training int8, QAT int8 (mask locked) exported to ONNX int8, and the
sparse model structurally shrunk (heads and FFN neurons removed, recovered, ONNX int8).
Accuracy on the disaster validation split; size on disk of each model and of the compact
sparse int8 storage. Needs the models of ``finetune.py``, ``distill.py`` and ``prune.py``.

    python benchmarks/speed.py [--threads 2] [--qat-steps 100] [--prune-work DIR] [--sparse NAME]

QAT fine-tunes the sparse model with its mask locked, task-distilled from the teacher it was
distilled from (recorded in its ``distilprune.json``). The targets are judged on the best
*sparse* compressed model; the best compressed model of any kind is reported too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import RESULTS, WORK, data_config, load_summary, require_data, run_main, staged, write_results

from distilprune.export import export_onnx
from distilprune.export.onnx import static_quantize_export
from distilprune.export.storage import save_compact
from distilprune.jobs.common import prepare_data
from distilprune.jobs.distill import TaskLoss, task_finetune
from distilprune.jobs.finetune import FinetuneConfig
from distilprune.jobs.shrink import shrink_dir
from distilprune.quantize import QATConfig
from distilprune.train import TrainConfig

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


def locked_finetune(model: Path, out: Path, steps: int, lr: float, qat: bool,
                    eval_every: int | None = None) -> None:
    """Fine-tune ``model`` with its mask locked (optionally QAT), task-distilled from the teacher
    recorded in its ``distilprune.json`` if it had one; the best evaluation's weights are kept."""
    cfg = FinetuneConfig(model=str(model), out=str(out), data=data_config(False), lock_sparsity=True,
                         qat=QATConfig() if qat else None, overwrite=True,
                         train=TrainConfig(max_steps=steps, lr=lr, batch_size=32, patience=None, seed=42,
                                           eval_every=eval_every))
    kd = (load_summary(model) or {}).get("distillation") or {}
    loss = TaskLoss(**{k: kd[k] for k in ("temperature", "alpha_soft", "alpha_hard")}) if kd else None
    task_finetune(cfg, kd.get("teacher"), loss)


def shrink_then_finetune(sparse: Path, out: Path, heads: float, neurons: float, steps: int) -> None:
    """Physically remove ``heads`` / ``neurons`` of the sparse model, then recover (mask locked)."""
    shrunk = out.with_name(f"{out.name}-raw")
    if load_summary(shrunk) is None:
        shrink_dir(sparse, shrunk, heads, neurons, overwrite=True)
    locked_finetune(shrunk, out, steps, lr=1e-4, qat=False)


def extra_sparse_rows(sparse: Path, out: Path, parity_texts: list[str]) -> list[Path]:
    """An extra sparse model: its fp32 row and its ONNX Runtime dynamic int8 row."""
    onnx = out / f"{sparse.name}-ptq-int8-onnx"
    staged(onnx, lambda: export_onnx(sparse, onnx, int8=True, max_length=128,
                                     parity_texts=parity_texts, overwrite=True))
    return [sparse, onnx]


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
    out = WORK / "speed" / f"{args.prune_work.name}-{args.sparse}"  # stages resume per sparse model
    data = prepare_data(data_config(False))
    val = data.val
    qat = out / "sparse-qat"
    staged(qat, lambda: locked_finetune(sparse, qat, args.qat_steps, args.qat_lr, qat=True,
                                              eval_every=args.qat_eval_every),
                 {"config.train.max_steps": args.qat_steps, "config.train.lr": args.qat_lr})
    shrunk = out / "sparse-shrunk"
    staged(shrunk, lambda: shrink_then_finetune(sparse, shrunk, args.shrink_heads, args.shrink_neurons,
                                                args.shrink_steps))
    exports = {"small-int8-onnx": (small, True), "sparse-fp32-onnx": (sparse, False),
               "sparse-ptq-int8-onnx": (sparse, True), "sparse-qat-int8-onnx": (qat, True),
               "sparse-shrunk-int8-onnx": (shrunk, True)}
    for name, (source, int8) in exports.items():
        staged(out / name, lambda s=source, n=name, q=int8: export_onnx(
            s, out / n, int8=q, max_length=128, parity_texts=val.texts[:500], overwrite=True))
    static = out / "sparse-static-int8-onnx"
    # activations calibrated on 200 training tweets; parity against the fp32 export on 500 validation ones
    calibration, parity = data.train.texts[:200], val.texts[:500]
    staged(static, lambda: static_quantize_export(out / "sparse-fp32-onnx", static, calibration,
                                                  parity_texts=parity))
    compact = save_compact(qat, out / "sparse-qat-compact", int8=True, overwrite=True)
    extra_rows = [row for extra in extras for row in extra_sparse_rows(
        extra, WORK / "speed" / f"{extra.parent.name}-{extra.name}", val.texts[:500])]
    if args.prepare_only:
        return
    from distilprune.benchmark import run_benchmark

    models = [str(teacher), str(student), str(small), str(dense), str(sparse), f"{sparse}@int8",
              *(str(out / n) for n in exports), str(static), *map(str, extra_rows)]
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
