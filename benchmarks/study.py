"""Disaster-tweet comparison study (Ojo et al. 2023) from ``recipes/disaster-study.yaml``.

Runs (or resumes) the study in ``work/study`` and copies ``study.json``, ``study.md`` (tables and
vocabulary coverage) and the bar chart to ``results/<name>.json``, ``results/<name>.md`` and
``results/<name>_accuracy.png``. The full recipe takes ~2.7 h on 2 idle cores (see its header).

    python benchmarks/study.py [--max-runs 36]
    python benchmarks/study.py --models minilm-l6 mpnet-base WORK/distill/student-gd \
        --model-lr WORK/distill/student-gd=8e-5     # + the distilled 6-layer student
    python benchmarks/study.py --limit 64 --max-steps 2 --models DIR --name study_smoke --out /tmp/s
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shutil
import sys
from pathlib import Path

from common import DISASTER_TRAIN, RESULTS, ROOT, WORK, require_data, result_path, run_main

from distilprune.jobs.study import load_study_recipe, run_study


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "disaster-study.yaml")
    parser.add_argument("--out", type=Path, default=WORK / "study", help="study directory (resumable)")
    parser.add_argument("--name", default="study", help="results file stem (trials: trials/<stem>)")
    parser.add_argument("--models", nargs="+", help="override the recipe's models")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the recipe's seeds")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="override the recipe's lr grid")
    parser.add_argument("--model-lr", action="append", default=[], metavar="MODEL=LR[,LR]",
                        help="lr grid for one model (repeatable; replaces the recipe's for that model)")
    parser.add_argument("--lock-sparsity", action="store_true", help="keep sparse models' zeros (see recipe)")
    parser.add_argument("--limit", type=int, help="use only N training tweets (smoke runs)")
    parser.add_argument("--max-steps", type=int, help="override the training budget (smoke runs)")
    parser.add_argument("--max-runs", type=int, help="train at most N runs now (rerun to continue)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the recipe's)")
    return parser.parse_args()


def parse_model_lrs(items: list[str]) -> dict[str, list[float]]:
    """``["mpnet-base=5e-5", "DIR=8e-5,1e-4"]`` → ``{"mpnet-base": [5e-5], "DIR": [8e-5, 1e-4]}``."""
    pairs = [item.rpartition("=") for item in items]
    return {model: [float(v) for v in lrs.split(",")] for model, _, lrs in pairs}


def main() -> None:
    args = parse_args()
    require_data()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_study_recipe(args.recipe)
    cfg.out, cfg.data.train = str(args.out), str(DISASTER_TRAIN)
    models = args.models or cfg.models
    own_lrs = {m: lrs for m, lrs in cfg.model_learning_rates.items() if m in models}
    cfg = dataclasses.replace(  # re-validated like the recipe
        cfg, models=models, seeds=args.seeds or cfg.seeds,
        learning_rates=args.learning_rates or cfg.learning_rates,
        model_learning_rates={**own_lrs, **parse_model_lrs(args.model_lr)})
    cfg.lock_sparsity = args.lock_sparsity or cfg.lock_sparsity
    cfg.data.limit = args.limit or cfg.data.limit
    cfg.train.max_steps = args.max_steps or cfg.train.max_steps
    cfg.max_runs = args.max_runs if args.max_runs is not None else cfg.max_runs
    cfg.threads = args.threads or cfg.threads
    result = run_study(cfg)
    out = Path(cfg.out)
    shutil.copy(out / "study.json", result_path(args.name, ".json"))  # name may be trials/<stem>
    markdown = (out / "study.md").read_text().replace("(study_accuracy.png)",
                                                      f"({Path(args.name).name}_accuracy.png)")
    command = " ".join(["python benchmarks/study.py", *sys.argv[1:]])
    markdown += f"\nCommand: `{command}` (recipe `{args.recipe.name}`).\n"
    result_path(args.name, ".md").write_text(re.sub(r"\n{3,}", "\n\n", markdown))
    if (out / "study_accuracy.png").is_file():
        shutil.copy(out / "study_accuracy.png", result_path(args.name, "_accuracy.png"))
    counts = result["counts"]
    print(f"{counts['done']}/{counts['total']} runs done ({counts['pending']} pending) -> "
          f"{RESULTS / args.name}.md")


if __name__ == "__main__":
    run_main(main)
