"""Sparsity that buys speed (issue: sparse int8 CPU engine), in two parts written to one report.

``--part kernel``: every Linear shape of MiniLM (384/1536) and of the 6L/768H student (768/3072)
at tokens = 8 x 128: dense int8 (torch fbgemm / onednn, ONNX Runtime MatMulInteger) vs the
block-sparse int8 kernel at 0/50/80/90/95 % (1x4) sparsity, at 1 and 2 threads.

``--part model``: disaster-tweet validation accuracy, latency (batch 1 and 8 at seq 128 and at
the real tweet lengths), throughput, peak RSS and size of the 12L MPNet fp32 teacher, MiniLM
dense ONNX int8 and the Prune OFA sparse MiniLMs (``prune.py`` work dir) on the sparse engine
and on DeepSparse, each in its own process, same threads; Kaggle test predictions per row.

    python benchmarks/sparse_speed.py --part kernel
    python benchmarks/sparse_speed.py --part model --prune-work benchmarks/work/prune609

Each part merges into ``results/sparse_speed.json`` (the other part's last run is kept), and
the summary, markdown table and plots are rebuilt from both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common import DISASTER_TEST, RESULTS, WORK, data_config, require_data, run_main, write_results

from distilprune.benchmark.kernels import DENSE_ENGINES, time_shape
from distilprune.io import atomic_file, save_png
from distilprune.reporting.formatting import markdown_table

NAME = "sparse_speed"
TOKENS = 8 * 128
SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
# (in, out, per layer): query/key/value as one fused GEMM (3 x hidden rows: every engine quantizes
# their shared input once), the attention output, the FFN up and down projections.
SHAPES = {"minilm": [(384, 1152, 1), (384, 384, 1), (384, 1536, 1), (1536, 384, 1)],
          "student-768": [(768, 2304, 1), (768, 768, 1), (768, 3072, 1), (3072, 768, 1)]}


def kernel_part(threads: list[int], repeats: int) -> dict[str, Any]:
    rows = []
    for model, shapes in SHAPES.items():
        for features, out, count in shapes:
            for n in threads:
                for row in time_shape(features, out, TOKENS, SPARSITIES, n, repeats):
                    rows.append({"model": model, "per_layer": count, **row})
                    print(rows[-1], flush=True)
    return {"rows": rows, "threads": threads, "tokens": TOKENS, "load_avg": os.getloadavg()}


def layer_ms(rows: list[dict], model: str, engine: str, sparsity: float, threads: int) -> float:
    """Time of one transformer layer's Linears (fused QKV, output, FFN up and down) on ``engine``."""
    return sum(r["ms"] * r["per_layer"] for r in rows if r["model"] == model and r["engine"] == engine
               and r["sparsity"] == sparsity and r["threads"] == threads)


def kernel_summary(kernel: dict[str, Any]) -> dict[str, Any]:
    """Per model and thread count: per-layer ms of each engine and the sparse speed-ups."""
    rows, table = kernel["rows"], []
    for model in SHAPES:
        for threads in kernel["threads"]:
            dense = {e: layer_ms(rows, model, e, 0.0, threads) for e in DENSE_ENGINES}
            best = min(dense, key=dense.get)
            entry = {"model": model, "threads": threads, "best_dense": best, "best_dense_ms": dense[best],
                     **{f"{e}_ms": v for e, v in dense.items()}}
            for s in SPARSITIES:
                ms = layer_ms(rows, model, "sparse", s, threads)
                entry[f"sparse{int(s * 100)}_ms"] = ms
                entry[f"speedup{int(s * 100)}"] = dense[best] / ms
            table.append(entry)
    return {"per_layer": table}


def plot_kernel(kernel: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHAPES), figsize=(11, 4))
    for ax, model in zip(axes, SHAPES, strict=True):
        for threads in kernel["threads"]:
            entry = next(e for e in kernel_summary(kernel)["per_layer"]
                         if e["model"] == model and e["threads"] == threads)
            ax.plot([s * 100 for s in SPARSITIES], [entry[f"sparse{int(s * 100)}_ms"] for s in SPARSITIES],
                    "o-", label=f"sparse int8, {threads} thr")
            ax.axhline(entry["best_dense_ms"], linestyle="--", color=ax.lines[-1].get_color(),
                       label=f"best dense int8 ({entry['best_dense']}), {threads} thr")
        ax.set(title=f"{model}: one layer's Linears, {TOKENS} tokens", xlabel="1x4 block sparsity (%)",
               ylabel="ms", yscale="log")
        ax.legend(fontsize=7)
    save_png(fig, path)


def kernel_markdown(kernel: dict[str, Any]) -> str:
    columns = ["model", "threads", "best_dense", "best_dense_ms", "torch-fbgemm_ms", "torch-onednn_ms",
               "ort-int8_ms", *[f"sparse{int(s * 100)}_ms" for s in SPARSITIES],
               *[f"speedup{int(s * 100)}" for s in SPARSITIES]]
    return ("## Kernel level: one transformer layer's Linears (fused QKV in->3in, in->in, in->4in, "
            f"4in->in), {TOKENS} tokens, median of runs\n\n"
            + markdown_table(kernel_summary(kernel)["per_layer"], columns)
            + "\n### Per shape (1x4 block sparsity; speed-up vs the best dense int8 of that shape)\n\n"
            + markdown_table(shape_table(kernel), ["model", "threads", "shape", "best_dense", "best_dense_ms",
                                                   *[f"speedup{int(s * 100)}" for s in SPARSITIES]]))


def shape_table(kernel: dict[str, Any]) -> list[dict[str, Any]]:
    """Per Linear shape and thread count: best dense int8 and the sparse speed-ups."""
    rows, table = kernel["rows"], []
    def key(row: dict[str, Any]) -> tuple:
        return row["model"], row["threads"], row["features"], row["out"]

    for model, threads, features, out in sorted({key(r) for r in rows}, key=lambda k: k[:2]):
        same = [r for r in rows if key(r) == (model, threads, features, out)]
        dense = min((r for r in same if r["engine"] in DENSE_ENGINES), key=lambda r: r["ms"])
        entry = {"model": model, "threads": threads, "shape": f"{features}->{out}",
                 "best_dense": dense["engine"], "best_dense_ms": dense["ms"]}
        for r in same:
            if r["engine"] == "sparse":
                entry[f"speedup{int(r['sparsity'] * 100)}"] = dense["ms"] / r["ms"]
        table.append(entry)
    return table


# ----------------------------------------------------------------------------- model level
TEACHER = WORK / "finetune" / "mpnet-base-raw"  # benchmarks/finetune.py (12L MPNet, 1 epoch)
STAGES = WORK / "sparse_speed"
PARITY_TEXTS = 500


def export_once(out: Path, export) -> str:
    """Run ``export(out)`` unless ``out`` already holds a finished export; returns ``out``."""
    if not (out / "config.json").is_file():
        export(out)
    return str(out)


def model_specs(teacher: Path, prune_work: Path, sparse: list[str], structured: Path | None,
                texts: list[str]) -> list[tuple[str, str]]:
    """``(row name, model path)`` of every row; exports are made once and reused."""
    from distilprune.engine.deepsparse import deepsparse_available, export_for_deepsparse
    from distilprune.export import export_onnx
    from distilprune.export.sparse import export_sparse

    parity = texts[:PARITY_TEXTS]
    dense = prune_work / "dense"
    rows = [("teacher-mpnet12-fp32", str(teacher)),
            ("minilm-dense-ort-int8", export_once(STAGES / "dense-onnx-int8", lambda out: export_onnx(
                dense, out, int8=True, parity_texts=parity)))]
    with_deepsparse, why = deepsparse_available()
    if not with_deepsparse:
        print(f"DeepSparse rows skipped: {why}", flush=True)
    for name in sparse:
        src = prune_work / name
        rows.append((f"minilm-{name}-sparse-engine", export_once(
            STAGES / f"{name}-sparse", lambda out, s=src: export_sparse(s, out, parity_texts=parity))))
        if with_deepsparse:
            rows.append((f"minilm-{name}-deepsparse", export_once(
                STAGES / f"{name}-deepsparse",
                lambda out, s=src: export_for_deepsparse(s, out, seq_len=128))))
    if structured is not None:
        rows.append(("minilm-structured-ofa-ort-int8", export_once(
            STAGES / "structured-onnx-int8", lambda out: export_onnx(structured, out, int8=True,
                                                                     parity_texts=parity))))
        rows.append(("minilm-structured-ofa-sparse-engine", export_once(
            STAGES / "structured-sparse", lambda out: export_sparse(structured, out,
                                                                    parity_texts=parity))))
    return rows


def write_predictions(name: str, spec: str, ids: list[str], texts: list[str]) -> str:
    """Kaggle ``id,target`` predictions of one row on the unlabelled test file."""
    from distilprune.benchmark.speed import load_runner
    from distilprune.export.runtime import read_config

    labels = read_config(spec).get("id2label") or {"0": "0", "1": "1"}
    names = [str(labels[str(i)] if str(i) in labels else labels[i]) for i in range(len(labels))]
    if names not in (["0", "1"], ["LABEL_0", "LABEL_1"]):
        raise SystemExit(f"{spec}: labels {names} are not the disaster targets 0/1")
    predicted = load_runner(spec, threads=2).predict_logits(texts).argmax(-1)
    path = RESULTS / f"predictions_disaster_{name}.csv"
    with atomic_file(path) as handle:
        handle.write("id,target\n" + "".join(f"{i},{int(p)}\n" for i, p in zip(ids, predicted, strict=True)))
    return path.name


def profile_sparse(spec: str, texts: list[str], threads: int, steps: int = 5) -> list[dict[str, Any]]:
    """Where a sparse-engine forward (batch 8 x 128) spends its time: op -> share of the total."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from distilprune.benchmark.speed import load_runner
    from distilprune.engine import attention
    from distilprune.engine.sparse import SparseLinear

    runner = load_runner(spec, threads=threads)
    batch = runner.encode((texts * 8)[:8], pad_to=128)
    plain, ops = SparseLinear.forward, attention._ops()
    kernel = ops.int8_attention

    def traced(self, x):
        with record_function("distilprune::sparse_int8_linear"):
            return plain(self, x)

    def traced_attention(*args):
        with record_function("distilprune::int8_attention"):
            return kernel(*args)

    SparseLinear.forward, ops.int8_attention = traced, traced_attention
    try:
        runner.run(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                runner.run(batch)
    finally:
        SparseLinear.forward, ops.int8_attention = plain, kernel
    events = [e for e in prof.key_averages() if e.key.startswith(("distilprune::", "aten::"))]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(events, key=lambda e: e.cpu_time_total if e.key.startswith("distilprune")
                 else e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "share": (e.cpu_time_total if e.key.startswith("distilprune")
                                    else e.self_cpu_time_total) / total,
             "ms_per_forward": (e.cpu_time_total if e.key.startswith("distilprune")
                                else e.self_cpu_time_total) / 1000 / steps} for e in top]


def headline_sparse(specs: list[tuple[str, str]]) -> str:
    """The 90 % 1x4 model on the sparse engine (else the first sparse-engine row): the profiled one."""
    engine = [(n, p) for n, p in specs if n.endswith("-sparse-engine")]
    return next((p for n, p in engine if "block-0.90" in n), engine[0][1])


def prepare_val_texts() -> list[str]:
    from distilprune.jobs.common import prepare_data

    require_data()
    return list(prepare_data(data_config(False)).val.texts)


def model_part(args: argparse.Namespace) -> dict[str, Any]:
    from distilprune.benchmark.speed import benchmark_models
    from distilprune.data.loading import load_table
    from distilprune.jobs.common import prepare_data

    require_data()
    val = prepare_data(data_config(False)).val
    specs = model_specs(args.teacher, args.prune_work, args.sparse, args.structured, list(val.texts))
    names, paths = [n for n, _ in specs], [p for _, p in specs]
    runs = {}
    for threads in args.threads:
        labels = list(val.labels) if threads == args.threads[0] else None
        results = benchmark_models(paths, val.texts, labels, threads=threads, batch_sizes=(1, 8),
                                   seq_len=128, repeats=args.repeats, dynamic=True)
        runs[str(threads)] = [{**r, "name": n} for r, n in zip(results, names, strict=True)]
    test = load_table(DISASTER_TEST, require_labels=False)
    predictions = {n: write_predictions(n, p, list(test.ids), list(test.texts)) for n, p in specs}
    sparse = headline_sparse(specs)
    profile = profile_sparse(sparse, list(val.texts), args.threads[0])
    return {"runs": runs, "threads": args.threads, "n_val": len(val.texts), "predictions": predictions,
            "profile": {"model": sparse, "threads": args.threads[0], "ops": profile},
            "prune_work": str(args.prune_work), "load_avg": os.getloadavg(),
            "command": "python benchmarks/sparse_speed.py " + " ".join(sys.argv[1:])}


def remeasure_part(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    """Latency again at ``--threads`` for the rows of the last model run, merged into it.

    Accuracy, predictions and the other thread settings are kept; for a quieter re-run of one
    setting (the conditions are recorded per setting).
    """
    from distilprune.benchmark.speed import benchmark_models
    from distilprune.jobs.common import prepare_data

    require_data()
    val = prepare_data(data_config(False)).val
    first = model["runs"][str(model["threads"][0])]
    names, specs = [r["name"] for r in first], [r["spec"] for r in first]
    for threads in args.threads:
        results = benchmark_models(specs, val.texts, None, threads=threads, batch_sizes=(1, 8),
                                   seq_len=128, repeats=args.repeats, dynamic=True)
        model["runs"][str(threads)] = [{**r, "name": n} for r, n in zip(results, names, strict=True)]
        model.setdefault("conditions_by_threads", {})[str(threads)] = args.conditions
    model["threads"] += [t for t in args.threads if t not in model["threads"]]
    model["remeasure_command"] = "python benchmarks/sparse_speed.py " + " ".join(sys.argv[1:])
    return model


def model_rows(model: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: accuracy (first thread setting), latency at every thread setting."""
    first = model["runs"][str(model["threads"][0])]
    teacher = first[0]
    rows = []
    for i, base in enumerate(first):
        row = {"model": base["name"], "kind": base["kind"], "accuracy": base["accuracy"],
               "retention": base["accuracy"] / teacher["accuracy"], "size_mb": base["size_mb"],
               "rss_mb": base["peak_rss_mb"]}
        for threads, run in model["runs"].items():
            r = run[i]
            for b in ("1", "8"):
                row[f"t{threads}_b{b}_s128_ms"] = r["latency"][b]["p50_ms"]
                row[f"t{threads}_b{b}_dyn_ms"] = r["latency_dynamic"][b]["p50_ms"]
            row[f"t{threads}_b8_speedup"] = run[0]["latency"]["8"]["p50_ms"] / r["latency"]["8"]["p50_ms"]
            row[f"t{threads}_b8_p95_ms"] = r["latency"]["8"]["p95_ms"]
            row[f"t{threads}_throughput"] = r["throughput"]
        rows.append(row)
    return rows


def model_summary(model: dict[str, Any]) -> dict[str, Any]:
    rows = model_rows(model)
    threads = model["threads"][0]
    b8 = {r["model"]: r[f"t{threads}_b8_s128_ms"] for r in rows}
    out: dict[str, Any] = {"summary_threads": threads}
    ours = next((r for r in rows if "0.90" in r["model"] and "block" in r["model"]
                 and r["kind"] == "sparse"), None)
    dense = next(r for r in rows if r["model"] == "minilm-dense-ort-int8")
    if ours:
        out["model_speedup_vs_dense_int8"] = b8[dense["model"]] / b8[ours["model"]]
        twin = ours["model"].replace("-sparse-engine", "-deepsparse")
        if twin in b8:
            out["speedup_vs_deepsparse"] = b8[twin] / b8[ours["model"]]
    keep = [r for r in rows[1:] if r["retention"] >= 0.975]
    if keep:
        best = min(keep, key=lambda r: b8[r["model"]])
        out.update(best_model=best["model"], best_speedup_vs_teacher=best[f"t{threads}_b8_speedup"],
                   best_retention_vs_teacher=best["retention"])
    structured_rows = [r for r in rows if "-structured-" in r["model"]]
    if structured_rows:  # the fastest engine for the structured model that keeps its 98 % target
        keeping = [r for r in structured_rows if r["retention"] >= 0.98] or structured_rows
        structured = min(keeping, key=lambda r: b8[r["model"]])
        out["structured_model"] = structured["model"]
        out.update(structured_speedup_vs_teacher=structured[f"t{threads}_b8_speedup"],
                   structured_retention_vs_teacher=structured["retention"])
    return out


def model_markdown(model: dict[str, Any]) -> str:
    threads = model["threads"]
    columns = ["model", "kind", "accuracy", "retention", "size_mb", "rss_mb",
               *[f"t{t}_{k}" for t in threads for k in ("b1_s128_ms", "b8_s128_ms", "b8_p95_ms",
                                                          "b1_dyn_ms", "b8_dyn_ms", "b8_speedup")]]
    return ("## Model level: disaster-tweet validation split "
            f"({model['n_val']} tweets), p50 latency in ms (s128: padded to 128 tokens, dyn: real "
            "lengths), speed-up vs the teacher at batch 8 x 128\n\n"
            + markdown_table(model_rows(model), columns)
            + "\nPredictions on the test file: " + ", ".join(f"`{p}`" for p in model["predictions"].values())
            + f"\n\n### Profile of `{Path(model['profile']['model']).name}` (batch 8 x 128, "
            f"{model['profile']['threads']} thread(s), torch.profiler)\n\n"
            + markdown_table(model["profile"]["ops"], ["op", "share", "ms_per_forward"]))


def plot_pareto(model: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = model["threads"][0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in model_rows(model):
        ax.scatter(row[f"t{threads}_b8_s128_ms"], row["accuracy"])
        ax.annotate(row["model"], (row[f"t{threads}_b8_s128_ms"], row["accuracy"]), fontsize=7)
    ax.set(xscale="log", xlabel=f"latency, batch 8 x 128 tokens, {threads} thread(s) (ms, log)",
           ylabel="validation accuracy", title="accuracy vs latency")
    save_png(fig, path)


def summary(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "kernel" in payload:
        entry = next(e for e in kernel_summary(payload["kernel"])["per_layer"]
                     if e["model"] == "minilm" and e["threads"] == 1)
        out["kernel_speedup_90"] = entry["speedup90"]  # one layer's Linears, fused QKV
        shapes = shape_table(payload["kernel"])
        out["kernel_speedup_90_per_shape"] = {e["shape"]: e["speedup90"] for e in shapes
                                               if e["model"] == "minilm" and e["threads"] == 1}
    if "model" in payload:
        out.update(model_summary(payload["model"]))
    return out


def load_previous() -> dict[str, Any]:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("kernel", "model", "remeasure", "profile"), action="append",
                        help="remeasure: latency of the last model run's rows again at --threads; "
                             "profile: the sparse-engine profile again")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--prune-work", type=Path, default=WORK / "prune609",
                        help="prune.py work dir holding dense/ and the ofa-* fine-tunes")
    parser.add_argument("--sparse", nargs="+", default=["ofa-block-0.90", "ofa-unstructured-0.90"],
                        help="sparse fine-tunes in --prune-work to measure")
    parser.add_argument("--structured", type=Path, help="structured Prune OFA fine-tune (structured.py)")
    parser.add_argument("--teacher", type=Path, default=TEACHER, help="the baseline row (first)")
    parser.add_argument("--conditions", default="", help="how the machine was used during the run (report)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the JSON")
    args = parser.parse_args()
    payload = load_previous()
    parts = [] if args.report_only else args.part or ["kernel", "model"]
    if "kernel" in parts:
        payload["kernel"] = {**kernel_part(args.threads, args.repeats), "conditions": args.conditions,
                             "command": "python benchmarks/sparse_speed.py --part kernel"}
    if "model" in parts:
        payload["model"] = {**model_part(args), "conditions": args.conditions}
    if "remeasure" in parts:
        payload["model"] = remeasure_part(args, payload["model"])
    if "profile" in parts:
        model = payload["model"]
        specs = [(r["name"], r["spec"]) for r in model["runs"][str(model["threads"][0])]]
        spec = headline_sparse(specs)
        model["profile"] = {"model": spec, "threads": model["threads"][0],
                            "ops": profile_sparse(spec, prepare_val_texts(), model["threads"][0])}
    payload["summary"] = summary(payload)
    md = render(payload)
    write_results(NAME, payload, md)
    print(md)


def render(payload: dict[str, Any]) -> str:
    """The markdown report (and its plots) of whatever parts the payload holds."""
    md = "# Sparse int8 engine: kernel and model speed\n\n"
    if "kernel" in payload:
        plot_kernel(payload["kernel"], RESULTS / f"{NAME}_kernel.png")
        md += kernel_markdown(payload["kernel"]) + f"\nPlot: `{NAME}_kernel.png`. "
        md += f"Conditions: {payload['kernel'].get('conditions') or 'not recorded'}.\n"
    if "model" in payload:
        plot_pareto(payload["model"], RESULTS / f"{NAME}_pareto.png")
        md += "\n" + model_markdown(payload["model"]) + f"\nPlot: `{NAME}_pareto.png`. "
        md += f"Conditions: {payload['model'].get('conditions') or 'not recorded'}.\n"
        for threads, text in payload["model"].get("conditions_by_threads", {}).items():
            md += f"The t{threads} columns were measured again later: {text}.\n"
    return md + "\n## Summary\n\n```json\n" + json.dumps(payload["summary"], indent=2) + "\n```\n"


if __name__ == "__main__":
    run_main(main)
