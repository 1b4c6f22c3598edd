"""DeepSparse 1.8.0 latency on MiniLM-L6: dense vs 90 % sparse (unstructured, 1x4 blocks).

The anchor a new sparse engine must beat. The packaged MiniLM (random, seeded classification
head: timing only) is magnitude-pruned here, per weight matrix, in the six encoder layers' Linear
weights (Q, K, V, attention output, intermediate, output; not embeddings, pooler or head):

* ``unstructured-0.90``: the 90 % smallest |w| of each matrix are zeroed;
* ``block1x4-0.90``: blocks of 4 consecutive *input* weights (``W[o, 4j:4j+4]``) ranked by L2
  norm, the 90 % weakest blocks of each matrix are zeroed.

Each model is exported with :func:`distilprune.engine.deepsparse.export_for_deepsparse` (fp32,
opset 14, static seq 128, symbolic batch, eager attention) and timed by a child process of
``.venv-deepsparse`` (``python -m distilprune.engine.deepsparse bench``: engines compiled per
batch size before timing, median of 30 runs after 5 warm-ups) at batch 1 and 8, 1 and 2 cores.
``dense-static-b1`` (the batch axis traced static) checks that the symbolic batch axis costs
nothing. ONNX Runtime on the dense export is the reference row. The machine may be shared:
``os.getloadavg()`` is recorded around every measurement.

    make deepsparse && .venv/bin/python benchmarks/deepsparse_probe.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import WORK, run_main, write_results

from distilprune.engine.deepsparse import (
    _worker_env,
    deepsparse_available,
    deepsparse_python,
    export_for_deepsparse,
)
from distilprune.reporting.formatting import markdown_table

OUT = WORK / "deepsparse_probe"
SEQ_LEN = 128
VARIANTS = ("dense", "unstructured-0.90", "block1x4-0.90", "dense-static-b1")


def encoder_linears(model: Any) -> list[Any]:
    import torch

    layers = model.base_model.encoder.layer
    return [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]


def prune_(model: Any, kind: str, sparsity: float) -> dict[str, float]:
    """Magnitude-prune the encoder Linear weights in place; returns the achieved sparsity."""
    import torch

    with torch.no_grad():
        for linear in encoder_linears(model):
            weight = linear.weight  # [out, in]
            if kind == "unstructured":
                score = weight.abs()
            else:  # 1x4 blocks along the input dim
                out_dim, in_dim = weight.shape
                score = weight.reshape(out_dim, in_dim // 4, 4).norm(dim=-1)
            k = int(round(sparsity * score.numel()))
            threshold = score.flatten().kthvalue(k).values
            keep = score > threshold
            if kind != "unstructured":
                keep = keep.repeat_interleave(4, dim=1)
            weight.mul_(keep)
    return sparsity_of(model)


def sparsity_of(model: Any) -> dict[str, float]:
    weights = [linear.weight for linear in encoder_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return {"encoder_linear_sparsity": zeros / total, "encoder_linear_params": total}


def build(variant: str, force: bool) -> tuple[Path, dict[str, Any]]:
    """Model dir + DeepSparse export of ``variant`` (reused when present)."""
    from distilprune.export.source import load_model_and_tokenizer

    export = OUT / variant / "export"
    info_file = OUT / variant / "variant.json"
    if export.is_dir() and info_file.is_file() and not force:
        return export, json.loads(info_file.read_text())
    model, tokenizer = load_model_and_tokenizer("minilm-l6")
    info: dict[str, Any] = {"variant": variant}
    if variant.startswith(("unstructured", "block1x4")):
        kind, sparsity = variant.split("-")
        info.update(prune_(model, kind, float(sparsity)))
    else:
        info.update(sparsity_of(model))
    model_dir = OUT / variant / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    start = time.perf_counter()
    batch = 1 if variant == "dense-static-b1" else None
    meta = export_for_deepsparse(model_dir, export, seq_len=SEQ_LEN, batch_size=batch,
                                 overwrite=True)
    info.update(export_s=time.perf_counter() - start, parity=meta["parity"],
                onnx_mb=meta["size_bytes"] / 1e6, static_batch=batch)
    info_file.write_text(json.dumps(info, indent=2))
    return export, info


def bench_deepsparse(export: Path, threads: list[int], batch_sizes: list[int], repeats: int,
                     warmup: int) -> dict[str, Any]:
    python = deepsparse_python()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(python), "-m", "distilprune.engine.deepsparse", "bench", str(export),
               "--json", str(out), "--threads", *map(str, threads),
               "--batch-sizes", *map(str, batch_sizes), "--repeats", str(repeats),
               "--warmup", str(warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(None))
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
        return json.loads(out.read_text())


def bench_onnxruntime(export: Path, threads: list[int], batch_sizes: list[int], repeats: int,
                      warmup: int) -> dict[str, Any]:
    from distilprune.benchmark.speed import OnnxRunner, measure
    from distilprune.export.runtime import SAMPLE_TEXTS

    runner = OnnxRunner(export, threads=threads[0])
    runs = []
    for n in threads:
        result = measure(runner, SAMPLE_TEXTS, batch_sizes=batch_sizes, seq_len=SEQ_LEN,
                         warmup=warmup, repeats=repeats, threads=n)
        result["load_avg"] = os.getloadavg()
        runs.append(result)
    return {"runs": runs}


def rows_of(variant: str, engine: str, result: dict[str, Any], info: dict[str, Any]
            ) -> list[dict[str, Any]]:
    rows = []
    for run in result.get("runs", []):
        for size, lat in run["latency"].items():
            rows.append({"variant": variant, "engine": engine, "threads": run["threads"],
                         "batch": int(size), "p50_ms": lat["p50_ms"], "min_ms": lat["min_ms"],
                         "p95_ms": lat["p95_ms"],
                         "compile_s": (run.get("compile_s") or {}).get(size),
                         "sparsity": info.get("encoder_linear_sparsity"),
                         "load_1m": run["load_avg"][0] if run.get("load_avg") else None})
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    dense = {(r["threads"], r["batch"]): r["p50_ms"] for r in rows
             if r["variant"] == "dense" and r["engine"] == "deepsparse"}
    for row in rows:
        base = dense.get((row["threads"], row["batch"]))
        row["speedup_vs_dense"] = base / row["p50_ms"] if base and row["p50_ms"] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--force", action="store_true", help="rebuild the exports")
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime reference")
    args = parser.parse_args()
    ok, how = deepsparse_available()
    if not ok:
        raise SystemExit(f"error: {how}")
    import torch

    torch.set_num_threads(2)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for variant in args.variants:
        print(f"[{variant}] export", flush=True)
        export, info = build(variant, args.force)
        sizes = [1] if variant == "dense-static-b1" else args.batch_sizes
        print(f"[{variant}] deepsparse {args.threads} threads, batch {sizes}", flush=True)
        result = bench_deepsparse(export, args.threads, sizes, args.repeats, args.warmup)
        details[variant] = {"info": info, "deepsparse": result}
        if "error" in result:
            print(f"[{variant}] DeepSparse failed: {result['error']}", flush=True)
        rows += rows_of(variant, "deepsparse", result, info)
        if variant == "dense" and not args.no_ort:
            print("[dense] onnxruntime reference", flush=True)
            ort = bench_onnxruntime(export, args.threads, args.batch_sizes, args.repeats, args.warmup)
            details[variant]["onnxruntime"] = ort
            rows += rows_of(variant, "onnxruntime", ort, info)
    add_speedups(rows)
    payload = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
               "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
               "how": how, "cpu": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "seq_len": SEQ_LEN, "repeats": args.repeats,
               "warmup": args.warmup, "rows": rows, "details": details}
    columns = ["variant", "engine", "threads", "batch", "p50_ms", "min_ms", "p95_ms",
               "speedup_vs_dense", "compile_s", "sparsity", "load_1m"]
    md = [f"# DeepSparse probe: MiniLM-L6, seq {SEQ_LEN}, median of {args.repeats} runs",
          "", f"Run {started} .. {payload['finished']} with {how} on {os.cpu_count()} CPUs. "
          f"Load average (1/5/15 min) at start {tuple(round(x, 2) for x in load_start)}, at end "
          f"{tuple(round(x, 2) for x in payload['load_avg_end'])}; `load_1m` is the 1-min load "
          "after each thread setting. `speedup_vs_dense`: DeepSparse dense p50 / this p50 at the "
          "same threads and batch. `compile_s`: DeepSparse engine compile time for that batch "
          "size. `sparsity`: zero fraction of the encoder Linear weights.", "",
          markdown_table(rows, columns)]
    write_results("deepsparse_probe", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    run_main(main)
