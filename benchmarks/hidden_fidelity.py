"""How closely sparse pre-trained models reproduce their dense teacher's hidden states (#20), layer
by layer, on the pre-training corpus's held-out texts (the same split ``distill-mlm`` holds out).

The pre-training loss is ``1 - cos(h_s, h_t)``; a cosine near 1 can hide large errors in most
coordinates when a few large-valued ones dominate the vectors' angle. Beside the cosine loss this
reports the share of the teacher's variation each model reproduces: pooled over every coordinate
(``R² = 1 - SSE / SST``, where the large coordinates weigh most) and the median of the
per-coordinate R² (each coordinate standardised by the teacher's spread: what a token-level
head sees).

    python benchmarks/hidden_fidelity.py --teacher benchmarks/work/tasks-u/head \\
        --corpus benchmarks/work/tasks-u/data/corpus-8f55f5fd650f.txt \\
        --model sparse80=benchmarks/work/tasks-u/sparse80 --model sparse90=benchmarks/work/tasks-u/sparse90 \\
        --name trials/hidden_fidelity

Writes ``results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from common import result_path, run_main, write_results

from distilprune.errors import require, require_file
from distilprune.io import save_png
from distilprune.jobs.distill import CorpusConfig, corpus_texts
from distilprune.models.base import load_tokenizer
from distilprune.models.loading import load_for_student
from distilprune.reporting.formatting import markdown_table


@torch.inference_mode()
def token_states(model_dir: str, encoded: dict[str, torch.Tensor],
                 batch_size: int = 32) -> list[torch.Tensor]:
    """Every layer's hidden states (embeddings first) of the non-padding tokens, ``(tokens, hidden)``."""
    body = load_for_student(model_dir).eval().base_model
    batches = []
    for start in range(0, len(encoded["input_ids"]), batch_size):
        window = {k: v[start:start + batch_size] for k, v in encoded.items()}
        batches.append(body(**window, output_hidden_states=True).hidden_states)
    keep = encoded["attention_mask"].bool()
    return [torch.cat([b[layer] for b in batches])[keep] for layer in range(len(batches[0]))]


def fidelity(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Cosine loss, pooled R², median per-coordinate R² of ``student`` against ``teacher``, and
    that median after the best linear map from student to teacher states (fitted on the even
    tokens, scored on the odd ones: what is lost, not merely rescaled or rotated)."""
    return {
        "cos_loss": (1 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean().item(),
        **r_squared(student, teacher),
        "r2_linear_map": r_squared(linear_map(student[0::2], teacher[0::2])(student[1::2]),
                                   teacher[1::2])["r2_median_coordinate"],
    }


def r_squared(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Share of the teacher's variation reproduced: pooled over coordinates, and per coordinate's median."""
    error = ((student - teacher) ** 2).sum(0)
    spread = ((teacher - teacher.mean(0)) ** 2).sum(0)
    return {"r2_pooled": 1 - (error.sum() / spread.sum()).item(),
            "r2_median_coordinate": (1 - error / spread.clamp_min(1e-12)).median().item()}


def linear_map(student: torch.Tensor, teacher: torch.Tensor, ridge: float = 1e-4):
    """The least-squares affine map from ``student`` to ``teacher`` rows, as a function (normal
    equations in double precision, a ``ridge`` relative to the mean diagonal for dead coordinates)."""
    def with_bias(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    inputs = with_bias(student)
    gram = inputs.T @ inputs
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    solution = torch.linalg.solve(gram, inputs.T @ teacher.double())
    return lambda x: (with_bias(x) @ solution).to(x.dtype)


def parse_models(items: list[str]) -> dict[str, str]:
    """``NAME=DIR`` pairs, each directory present."""
    models = {}
    for item in items:
        name, sep, folder = item.partition("=")
        require(bool(sep and name and folder), f"--model takes NAME=DIR, got {item!r}")
        require_file(Path(folder) / "config.json", f"model {name}")
        models[name] = folder
    return models


MEASURES = {"cos_loss": "1-cos", "r2_pooled": "R² pooled", "r2_median_coordinate": "R² median coord.",
            "r2_linear_map": "R² median coord., linear map"}


def report(payload: dict[str, Any]) -> str:
    """The markdown table: one row per model and layer."""
    rows = [{"model": name, "layer": layer,
             **{label: round(scores[key], 3) for key, label in MEASURES.items()}}
            for name, layers in payload["models"].items() for layer, scores in enumerate(layers, 1)]
    return (f"# {payload['name']}: hidden-state fidelity to the dense teacher\n\n"
            f"{payload['texts']} held-out texts of `{payload['corpus']}` ({payload['tokens']:,} tokens, "
            f"max length {payload['max_length']}); teacher `{payload['teacher']}`. 1-cos: the "
            "pre-training loss; R² pooled: share of the teacher's variation over all coordinates; "
            "R² median coord.: median over coordinates of each one's R²; linear map: the same after "
            "the best affine map from the model's states to the teacher's (fitted on even tokens, "
            "scored on odd ones).\n\n"
            f"{markdown_table(rows, ['model', 'layer', *MEASURES.values()])}\n"
            f"![fidelity]({Path(payload['name']).name}.png)\n\n"
            f"Command: `{payload['command']}`\n")


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, layers in payload["models"].items():
        ax.plot(range(1, len(layers) + 1), [m["r2_median_coordinate"] for m in layers],
                marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("median per-coordinate R² vs teacher")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the dense model the students started from")
    parser.add_argument("--corpus", required=True, help="pre-training corpus (held-out texts read)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--texts", type=int, default=256, help="held-out texts to read")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--name", required=True, help="results stem (e.g. trials/hidden_fidelity)")
    args = parser.parse_args()
    models = parse_models(args.model)
    require_file(Path(args.corpus), "corpus")
    texts = corpus_texts(CorpusConfig(files=[args.corpus], max_length=args.max_length))[1][: args.texts]
    require(bool(texts), f"{args.corpus} has no held-out texts")
    tokenizer = load_tokenizer(args.teacher)
    encoded = dict(tokenizer(texts, truncation=True, max_length=args.max_length, padding=True,
                             return_tensors="pt"))
    teacher = token_states(args.teacher, encoded)
    payload: dict[str, Any] = {
        "benchmark": "hidden_fidelity", "name": args.name, "teacher": args.teacher, "corpus": args.corpus,
        "texts": len(texts),
        "tokens": int(encoded["attention_mask"].sum()), "max_length": args.max_length,
        "command": shlex.join(["python", "benchmarks/hidden_fidelity.py", *sys.argv[1:]]), "models": {},
    }
    vocabulary = tokenizer.get_vocab()
    for name, folder in models.items():
        require(load_tokenizer(folder).get_vocab() == vocabulary, f"{name}'s tokenizer is not the teacher's")
        states = token_states(folder, encoded)
        require(len(states) == len(teacher),
                f"{name} has {len(states) - 1} layers, the teacher {len(teacher) - 1}")
        payload["models"][name] = [fidelity(s, t) for s, t in zip(states[1:], teacher[1:], strict=True)]
    write_results(args.name, payload, report(payload))
    plot(payload, result_path(args.name, ".png"))


if __name__ == "__main__":
    run_main(main)
