"""A diagnostic model for #20: a copy of ``--base`` (e.g. a sparse pre-trained MiniLM) whose
transformer layers ``--layers`` are replaced by those of ``--donor`` (its dense teacher). Fine-tuned
like the base, it tells which layers' pruning costs a task (not a model to ship: the grafted
layers are dense).

    python benchmarks/graft_layers.py --base benchmarks/work/tasks-u/sparse80 \\
        --donor benchmarks/work/tasks-u/head --layers 5 --out benchmarks/work/tasks-budget/sparse80-dense6

Layers are numbered from 0, as in the weight names (``encoder.layer.5.``).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from common import run_main
from safetensors.torch import load_file, save_file

from distilprune.errors import require, require_file
from distilprune.io import atomic_dir, read_json, write_json


def grafted(base: dict, donor: dict, layers: list[int]) -> dict:
    """``base`` with every tensor of the ``layers`` taken from ``donor`` (same names and shapes)."""
    pattern = re.compile(rf"\.layers?\.({'|'.join(map(str, layers))})\.")
    chosen = {name for name in base if pattern.search(name)}
    require(bool(chosen), f"no weights of layers {layers} in the base model")
    for name in sorted(chosen):
        require(name in donor and donor[name].shape == base[name].shape,
                f"the donor has no weight {name} of shape {tuple(base[name].shape)}")
    return {name: (donor[name] if name in chosen else tensor).contiguous() for name, tensor in base.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--donor", type=Path, required=True)
    parser.add_argument("--layers", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for folder in (args.base, args.donor):
        require_file(folder / "model.safetensors", "model weights")
    weights = grafted(load_file(args.base / "model.safetensors"), load_file(args.donor / "model.safetensors"),
                      args.layers)
    with atomic_dir(args.out) as tmp:
        shutil.copytree(args.base, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            "stage.json", "sparsity.*", "train_log.json", "loss.png", "README.md"))  # the base's run
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        meta_path = tmp / "distilprune.json"
        meta = read_json(meta_path) if meta_path.is_file() else {}
        meta["grafted"] = {"base": str(args.base), "donor": str(args.donor), "layers": args.layers}
        write_json(meta_path, meta)


if __name__ == "__main__":
    run_main(main)
