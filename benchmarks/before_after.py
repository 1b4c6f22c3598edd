"""Before / after a refactor: do two runs of the same pipeline recipe give the same models? (#18)

Compares every stage's weights (safetensors tensors, ONNX and compact files byte for byte), the
validation metrics, masked-LM stages' held-out masked accuracy and the benchmark's accuracy and
sizes of two run directories made by ``distilprune run RECIPE --out DIR`` (or a benchmark's work
directory) at two commits (seeded runs repeat exactly).

    python benchmarks/before_after.py BEFORE_DIR AFTER_DIR --note "how the runs were made"
    python benchmarks/before_after.py OLD NEW --stages mpnet-mlm student-gd --name distill_before_after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import run_main, write_results
from safetensors.torch import load_file

from distilprune.reporting.formatting import markdown_table

STAGES = ("teacher", "mlm_head", "student", "distill", "finetune", "qat", "export")


def same_file(a: Path, b: Path) -> bool:
    """Tensors equal for safetensors (header order aside), bytes equal otherwise."""
    if not b.is_file():
        return False
    if a.suffix == ".safetensors":
        x, y = load_file(a), load_file(b)
        return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)
    return a.read_bytes() == b.read_bytes()


def rows(before: Path, after: Path, stages: list[str]) -> list[dict]:
    out = []
    for stage in stages:
        for path in sorted((before / stage).rglob("*")):
            if path.suffix in (".safetensors", ".onnx"):
                other = after / path.relative_to(before)
                out.append({"what": str(path.relative_to(before)), "same": same_file(path, other)})
        metrics = before / stage / "metrics.json"
        if metrics.is_file():
            a, b = (json.loads(p.read_text()) for p in (metrics, after / stage / "metrics.json"))
            out.append({"what": f"{stage} accuracy / F1", "before": f"{a['accuracy']:.4f} / {a['f1']:.4f}",
                        "after": f"{b['accuracy']:.4f} / {b['f1']:.4f}",
                        "same": (a["accuracy"], a["f1"]) == (b["accuracy"], b["f1"])})
        masked = [json.loads((d / stage / "distilprune.json").read_text()).get("masked_accuracy")
                  if (d / stage / "distilprune.json").is_file() else None for d in (before, after)]
        if masked[0] is not None:  # a masked-LM stage: its held-out masked-token accuracy
            out.append({"what": f"{stage} masked accuracy", "before": f"{masked[0]:.4f}",
                        "after": f"{masked[1]:.4f}" if masked[1] is not None else "-",
                        "same": masked[0] == masked[1]})
    if not (before / "benchmark" / "benchmark.json").is_file():
        return out
    bench = [json.loads((d / "benchmark" / "benchmark.json").read_text())["models"] for d in (before, after)]
    for a, b in zip(*bench, strict=True):
        shown = [f"{m['accuracy']:.4f} / {m['size_bytes'] / 1e6:.1f}" for m in (a, b)]
        out.append({"what": f"benchmark {a['name']} accuracy / MB", "before": shown[0], "after": shown[1],
                    "same": (a["accuracy"], a["size_bytes"]) == (b["accuracy"], b["size_bytes"])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument("--name", default="redesign_before_after")
    parser.add_argument("--stages", nargs="+", default=list(STAGES),
                        help="stage directories to compare (default: the pipeline's)")
    parser.add_argument("--title", default="Before / after the redesign (#18)")
    args = parser.parse_args()
    table = rows(args.before, args.after, args.stages)
    payload = {"note": args.note, "all_same": all(r["same"] for r in table), "rows": table}
    md = (f"# {args.title}\n\n{args.note}\n\n"
          + markdown_table(table, ["what", "before", "after", "same"])
          + f"\nEverything the same: **{payload['all_same']}**. Latencies are not compared (timing noise).\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
