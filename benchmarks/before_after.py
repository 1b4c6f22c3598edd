"""Before / after a refactor: do two runs of the same pipeline recipe give the same models? (#18)

Compares every stage's weights (safetensors tensors, ONNX and compact files byte for byte), the
validation metrics, masked-LM stages' held-out masked accuracy and the benchmark's accuracy and
sizes of two run directories made by ``distilprune run RECIPE --out DIR`` (or a benchmark's work
directory) at two commits (seeded runs repeat exactly).

    python benchmarks/before_after.py BEFORE_DIR AFTER_DIR --note "how the runs were made"
    python benchmarks/before_after.py OLD NEW --stages mpnet-mlm student-gd --name distill_before_after
    python benchmarks/before_after.py --make-tiny DIR   # then: distilprune run DIR/tiny-pipeline.yaml

``--make-tiny`` writes a tiny random BERT, the first 200 disaster tweets and a pipeline recipe of a
few steps a stage (the test suite's) into DIR: a before / after run of every stage in a minute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DISASTER_TRAIN, run_main, write_results
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


def make_tiny(folder: Path) -> Path:
    """A tiny random BERT, 200 labelled tweets and ``tiny-pipeline.yaml`` in ``folder``."""
    import csv

    import yaml

    from distilprune.models.tiny import build_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    with DISASTER_TRAIN.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:200]
    data = folder / "tweets200.csv"
    with data.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    model = build_tiny_model("bert", folder / "tiny-bert", [r["text"] for r in rows], num_layers=4)

    def train(steps: int) -> dict:
        return {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "patience": None, "eval_every": steps,
                "log_every": 1, "warmup_ratio": 0.0}

    prune = {"method": "block", "block_size": 4, "final_sparsity": 0.5, "end_fraction": 0.5, "frequency": 1}
    recipe = {"threads": 1, "data": {"train": str(data), "max_length": 32, "val_fraction": 0.25},
              "teacher": {"model": str(model), "train": train(6)}, "student": {"layers": 2},
              "mlm_head": {"steps": 3, "batch_size": 8},
              "distill": {"corpus": {"files": [str(data)], "max_length": 32, "heldout": 8}, "train": train(8),
                          "prune": prune},
              "finetune": {"train": train(6), "task_distillation": True}, "qat": {"steps": 3, "lr": 1e-4},
              "export": {"parity_texts": 16},
              "benchmark": {"models": ["teacher", "baseline", "student", "compressed"], "repeats": 2,
                            "warmup": 1, "batch_sizes": [1, 8], "limit": 40}}
    path = folder / "tiny-pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, nargs="?")
    parser.add_argument("after", type=Path, nargs="?")
    parser.add_argument("--make-tiny", type=Path, metavar="DIR", help="write a tiny model, data and recipe")
    parser.add_argument("--note", default="")
    parser.add_argument("--name", default="redesign_before_after")
    parser.add_argument("--stages", nargs="+", default=list(STAGES),
                        help="stage directories to compare (default: the pipeline's)")
    parser.add_argument("--title", default="Before / after the redesign (#18)")
    args = parser.parse_args()
    if args.make_tiny:
        print(f"wrote {make_tiny(args.make_tiny)}")
        return
    if args.after is None:
        parser.error("give the BEFORE and AFTER run directories (or --make-tiny DIR)")
    table = rows(args.before, args.after, args.stages)
    payload = {"note": args.note, "all_same": all(r["same"] for r in table), "rows": table}
    md = (f"# {args.title}\n\n{args.note}\n\n"
          + markdown_table(table, ["what", "before", "after", "same"])
          + f"\nEverything the same: **{payload['all_same']}**. Latencies are not compared (timing noise).\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
