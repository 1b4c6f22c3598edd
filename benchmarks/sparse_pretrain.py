"""Sparse pre-training variants compared before any fine-tuning (#20): how far each pruned MiniLM's
hidden states are from the dense model's on held-out text.

The variants are the stages of the recipe ``benchmarks/recipes/sparse_pretrain.yaml`` (each one
``distill-mlm``: MiniLM distilled into its pruned self on ``tasks.py``'s broad corpus, every-layer
hidden cosine, length 128, batch 32, 200 steps, to 80 % at half the steps), run here by
``distilprune run``'s engine (finished stages are skipped). The score is the cosine distance
``1 - cos`` between the sparse and dense hidden states of every layer, eval mode, on 128
paragraphs of the SQuAD *validation* articles (never trained on). Rows "one-shot" prune the dense
model at once to 80 % 1x4 without training (magnitude, or activation norms from 128 corpus texts).

    python benchmarks/sparse_pretrain.py          # -> results/sparse_pretrain.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, WORK, run_main, write_results

from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "sparse_pretrain.yaml"
TASKS_DATA = WORK / "tasks" / "data"  # tasks.py's splits
SPARSITY = 0.8


def heldout_texts(n: int = 128) -> list[str]:
    """Paragraphs (30+ words) of the SQuAD validation articles, in file order."""
    payload = json.loads((TASKS_DATA / "squad_val1000.json").read_text())
    contexts = dict.fromkeys(p["context"] for a in payload["data"] for p in a["paragraphs"])
    return [c for c in contexts if len(c.split()) >= 30][:n]


def variant_label(settings: dict[str, Any]) -> str:
    """``1x4 activation, lr 5e-4`` from a stage's settings."""
    prune = settings["prune"]
    method = "1x4" if prune["method"] == "block" else prune["method"]
    return f"{method} {prune.get('criterion', 'magnitude')}, lr {settings['train']['lr']:g}"


def encode(texts: list[str]):
    from transformers import AutoTokenizer

    from distilprune.models.registry import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    return tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")


def hidden_states(model, batch) -> tuple:
    import torch

    model.eval()
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states[1:]


def distances(model, batch, dense_states) -> list[float]:
    """``1 - cos`` between ``model``'s and the dense model's hidden states, per layer (real tokens)."""
    import torch.nn.functional as F

    real = batch["attention_mask"].bool()
    return [round(float(1 - F.cosine_similarity(a[real], b[real], dim=-1).mean()), 4)
            for a, b in zip(hidden_states(model, batch), dense_states, strict=True)]


def one_shot(criterion: str, calibration):
    """The dense encoder pruned at once to :data:`SPARSITY` in 1x4 blocks, by ``criterion``."""
    from transformers import AutoModel

    from distilprune.models.registry import resolve_model
    from distilprune.prune import attach_masks, finalize, update_masks
    from distilprune.prune.activations import InputNorms

    model = AutoModel.from_pretrained(resolve_model("minilm-l6"))
    attach_masks(model)
    norms = None
    if criterion == "activation":
        collector = InputNorms(model)
        hidden_states(model, calibration)
        norms = collector.scales()
        collector.remove()
    update_masks(model, SPARSITY, "block", 4, input_norms=norms)
    finalize(model)
    return model


def measure(folders: dict[str, Path]) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModel

    from distilprune.models.registry import resolve_model

    torch.manual_seed(0)
    batch = encode(heldout_texts())
    dense = hidden_states(AutoModel.from_pretrained(resolve_model("minilm-l6")), batch)
    corpus = [line.strip() for line in next(TASKS_DATA.glob("corpus-*.txt")).read_text().splitlines()[:128]]
    models = {f"one-shot 1x4 {c}": (lambda c=c: one_shot(c, encode(corpus)))
              for c in ("magnitude", "activation")}
    models |= {name: (lambda p=path: AutoModel.from_pretrained(p)) for name, path in folders.items()}
    rows = []
    for name, load in models.items():
        per_layer = distances(load(), batch, dense)
        rows.append({"variant": name, "mean": round(sum(per_layer) / len(per_layer), 4),
                     "last": per_layer[-1], **{f"layer{i + 1}": d for i, d in enumerate(per_layer)}})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distilprune.io import save_png

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        layers = [row[k] for k in row if k.startswith("layer")]
        ax.plot(range(1, len(layers) + 1), layers, marker="o", label=row["variant"],
                linestyle="--" if row["variant"].startswith("one-shot") else "-")
    ax.set_xlabel("layer")
    ax.set_ylabel("1 - cos to the dense hidden states")
    ax.set_title("MiniLM-L6 at 80 % (1x4 unless named): held-out SQuAD paragraphs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main() -> None:
    from distilprune.jobs.graph import load_graph, run_graph

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--also", nargs="*", default=[], metavar="LABEL=DIR",
                        help="more sparse models to measure, e.g. a tasks.py trial's pre-trained model")
    args = parser.parse_args()
    also = dict(item.split("=", 1) for item in args.also)
    os.chdir(ROOT)  # the recipe's paths are relative to the repository root
    start = time.perf_counter()
    recipe = load_graph(RECIPE)
    result = run_graph(recipe)
    folders = {variant_label(spec.settings): Path(recipe.out) / name for name, spec in recipe.stages.items()}
    folders |= {label: Path(folder) for label, folder in also.items()}
    rows = measure(folders)
    adopted = [variant_label(recipe.stages[name].settings) for name, record in result.records.items()
               if (record.get("summary") or {}).get("adopted_from")]
    payload = {"benchmark": "sparse_pretrain", "sparsity": SPARSITY, "rows": rows,
               "recipe": str(RECIPE.relative_to(ROOT)), "status": result.status, "also": also,
               "heldout": "128 SQuAD validation-article paragraphs, length 128", "adopted": adopted,
               "seconds": round(time.perf_counter() - start)}
    columns = ["variant", "mean", *[k for k in rows[0] if k.startswith("layer")]]
    md = ("# Sparse pre-training variants, before fine-tuning\n\n"
          f"{__doc__.split(chr(10) + chr(10))[1]}\n\n"
          "Cosine distance to the dense model (lower is better):\n\n" + markdown_table(rows, columns)
          + (f"\nRun by the same settings on the command line before the recipe existed, adopted as its "
             f"stages (their saved configs equal the stages'): {', '.join(adopted)}.\n" if adopted else "")
          + "".join(f"\n{label}: `{folder}` (not a stage of the recipe).\n" for label, folder in also.items())
          + f"\nCommand: `{shlex.join(['python', 'benchmarks/sparse_pretrain.py', *sys.argv[1:]])}` "
          f"(recipe `{payload['recipe']}`)\n\n"
          "![distances](sparse_pretrain.png)\n")
    write_results("sparse_pretrain", payload, md)
    plot(rows, RESULTS / "sparse_pretrain.png")


if __name__ == "__main__":
    run_main(main)
