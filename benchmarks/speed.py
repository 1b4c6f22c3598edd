"""Speed and size benchmark (issue: quantization, export and real CPU speed).

In one run, each model in its own process, same inputs (seq 128), same threads:
12L MPNet teacher fp32 (PyTorch), its 6L/768H distilled student fp32, the 6L/384H MiniLM dense
and 90% sparse (Prune OFA, ``prune.py``) fp32, and the compressed sparse models: torch dynamic
int8, ONNX Runtime post-training int8 and QAT int8 (mask locked) exported to ONNX int8.
Accuracy on the disaster validation split; size on disk of each model and of the compact
sparse int8 storage. Needs the models of ``finetune.py``, ``distill.py`` and ``prune.py``.

    python benchmarks/speed.py [--threads 2] [--qat-steps 100] [--sparse ofa-block-0.90]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, WORK, load_summary, require_data, write_results
from finetune import data_config

from distilprune.export import export_onnx
from distilprune.export.onnx import static_quantize_export
from distilprune.export.storage import save_compact
from distilprune.jobs.common import prepare_data
from distilprune.jobs.finetune import FinetuneConfig, finetune
from distilprune.quantize import QATConfig
from distilprune.train import TrainConfig

OUT = WORK / "speed"


def staged(out: Path, run) -> None:
    if not out.exists():
        start = time.perf_counter()
        run()
        print(f"[stage] {out.name} done in {time.perf_counter() - start:.0f}s", flush=True)


def best_compressed(rows: list[dict], min_retention: float = 0.98) -> dict:
    """The fastest model at batch 8 keeping ``min_retention`` of the teacher's (first row's) accuracy."""
    teacher = rows[0]
    keep = [r for r in rows[1:] if r["accuracy"] >= min_retention * teacher["accuracy"]] or rows[1:]
    best = min(keep, key=lambda r: r["latency"]["8"]["p50_ms"])
    return {"name": best["name"], "accuracy": best["accuracy"],
            "accuracy_retention": best["accuracy"] / teacher["accuracy"],
            "speedup_b8": teacher["latency"]["8"]["p50_ms"] / best["latency"]["8"]["p50_ms"],
            "speedup_b1": teacher["latency"]["1"]["p50_ms"] / best["latency"]["1"]["p50_ms"],
            "size_ratio": teacher["size_bytes"] / best["size_bytes"],
            "meets_targets": bool(best["accuracy"] >= min_retention * teacher["accuracy"]
                                  and teacher["latency"]["8"]["p50_ms"] >= 10 * best["latency"]["8"]["p50_ms"]
                                  and teacher["size_bytes"] >= 10 * best["size_bytes"])}


def best_line(best: dict) -> str:
    return (f"\nBest compressed model (fastest at batch 8 with >= 98% of the teacher's accuracy): "
            f"`{best['name']}`: accuracy {best['accuracy']:.4f} ({best['accuracy_retention']:.1%} of the "
            f"teacher's), {best['speedup_b8']:.1f}x faster at batch 8 "
            f"({best['speedup_b1']:.1f}x at batch 1), "
            f"{best['size_ratio']:.1f}x smaller on disk; targets (10x, 10x, 98%) "
            f"{'met' if best['meets_targets'] else 'NOT met'}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat-steps", type=int, default=100)
    parser.add_argument("--sparse", default="ofa-block-0.90", help="model under benchmarks/work/prune")
    parser.add_argument("--dense", default="dense", help="its dense counterpart under benchmarks/work/prune")
    parser.add_argument("--student", default="student-c-gd-td", help="model under benchmarks/work/distill")
    parser.add_argument("--small", default="minilm-l6-raw",
                        help="dense small model under benchmarks/work/finetune (exported to ONNX int8)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    require_data()
    teacher = WORK / "finetune" / "mpnet-base-raw"
    student = WORK / "distill" / args.student
    sparse, dense = WORK / "prune" / args.sparse, WORK / "prune" / args.dense
    small = WORK / "finetune" / args.small
    for path in (teacher, student, small, dense, sparse):
        if load_summary(path) is None:
            raise SystemExit(f"missing {path}: run the finetune / distill / prune benchmarks first")
    data = prepare_data(data_config(False))
    val = data.val
    qat = OUT / "sparse-qat"
    staged(qat, lambda: finetune(FinetuneConfig(
        model=str(sparse), out=str(qat), data=data_config(False), lock_sparsity=True, qat=QATConfig(),
        train=TrainConfig(max_steps=args.qat_steps, lr=2e-5, batch_size=32, patience=None, seed=42))))
    exports = {"small-int8-onnx": (small, True), "sparse-fp32-onnx": (sparse, False),
               "sparse-ptq-int8-onnx": (sparse, True), "sparse-qat-int8-onnx": (qat, True)}
    for name, (source, int8) in exports.items():
        staged(OUT / name, lambda s=source, n=name, q=int8: export_onnx(
            s, OUT / n, int8=q, max_length=128, parity_texts=val.texts[:500], overwrite=True))
    static = OUT / "sparse-static-int8-onnx"
    # activations calibrated on 200 training tweets; parity against the fp32 export on 500 validation ones
    staged(static, lambda: static_quantize_export(OUT / "sparse-fp32-onnx", static, data.train.texts[:200],
                                                  parity_texts=val.texts[:500]))
    compact = save_compact(qat, OUT / "sparse-qat-compact", int8=True, overwrite=True)
    from distilprune.benchmark import run_benchmark

    models = [str(teacher), str(student), str(small), str(dense), str(sparse), f"{sparse}@int8",
              *(str(OUT / n) for n in exports), str(static)]
    report = run_benchmark(models, val.texts, val.labels, RESULTS / "speed_raw", threads=args.threads,
                           batch_sizes=(1, 8), seq_len=128, repeats=args.repeats)
    teacher_bytes = sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    best = best_compressed(report["models"])
    payload = {"benchmark": "speed", "threads": args.threads, "best_compressed": best, "report": report,
               "compact_storage": {**{k: compact[k] for k in ("compact_bytes", "dense_bytes", "sparsity")},
                                   "teacher_bytes": teacher_bytes,
                                   "teacher_over_compact": teacher_bytes / compact["compact_bytes"]},
               "command": "python benchmarks/speed.py"}
    ratio = teacher_bytes / compact["compact_bytes"]
    md = (Path(report["files"]["md"]).read_text()
          + f"\nRows: `{teacher.name}` 12L/768H teacher; `{student.name}` its 6L/768H distilled student; "
          f"`{small.name}` MiniLM 6L/384H fine-tuned 3 epochs (`finetune.py`), `small-int8-onnx` its "
          f"ONNX Runtime dynamic int8; `{dense.name}` / `{sparse.name}` MiniLM fine-tuned 1 epoch dense / "
          f"Prune-OFA sparse (`prune.py`); `@int8` = torch dynamic int8; "
          "`sparse-fp32-onnx` = ONNX Runtime fp32; "
          "`sparse-ptq-int8-onnx` / `sparse-static-int8-onnx` = ONNX Runtime post-training dynamic / static "
          f"(calibrated) int8; `sparse-qat-int8-onnx` = {args.qat_steps} QAT steps (mask locked), then "
          "ONNX int8.\n"
          + best_line(best)
          + f"\nCompact sparse int8 storage of the QAT model: {compact['compact_bytes'] / 1e6:.1f} MB "
          f"vs teacher {teacher_bytes / 1e6:.1f} MB ({ratio:.1f}x smaller)."
          "\nCommand: `python benchmarks/speed.py`.\n")
    write_results("speed", payload, md)
    print(md)


if __name__ == "__main__":
    main()
