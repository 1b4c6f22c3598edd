"""The fine-tuning stages of a stage-graph recipe as one results table: each stage's validation
score, its ratio to a baseline stage (retention), sparsity, learning rate and steps.

    python benchmarks/recipe_report.py benchmarks/recipes/tasks_qnli_diagnosis.yaml \\
        --baseline qnli-dense --name trials/tasks_qnli_diagnosis [--run] [--set KEY=VALUE] [--note TEXT]

With several ``--baseline`` stages (one per task), each stage's retention is of the baseline
validated on the same file.

``--run`` runs the recipe first (``distilprune run``'s engine: finished stages are skipped);
without it, stages not finished yet are listed as such. Writes ``results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from common import ROOT, load_summary, run_main, write_results

from distilprune.config import dotted_overrides
from distilprune.jobs.graph import GraphRecipe, load_graph, run_graph
from distilprune.reporting.formatting import markdown_table

COLUMNS = ["stage", "model", "lock_sparsity", "teacher", "lr", "steps", "metric", "score", "baseline",
           "retention", "sparsity", "seconds"]


def stage_row(recipe: GraphRecipe, name: str) -> dict[str, Any] | None:
    """A finished fine-tuning stage's settings and validation score (None if not finished)."""
    spec, summary = recipe.stages[name], load_summary(Path(recipe.out) / name)
    if summary is None:
        return None
    train = spec.settings.get("train") or {}
    metric = train.get("select_metric", "accuracy")
    if metric not in summary["metrics"]:  # NER and QA select on entity / answer F1
        metric = "f1" if "f1" in summary["metrics"] else next(iter(summary["metrics"]))
    return {"stage": name, "model": spec.sources.get("model", spec.settings.get("model")),
            "lock_sparsity": bool(spec.settings.get("lock_sparsity")),
            "teacher": spec.sources.get("teacher", spec.settings.get("teacher")) or "-",
            "lr": train.get("lr"), "steps": summary["train"]["steps"], "metric": metric,
            "score": summary["metrics"][metric], "sparsity": summary.get("sparsity"),
            "seconds": summary["train"]["seconds"]}


def validation_file(recipe: GraphRecipe, name: str) -> str | None:
    """The file a fine-tuning stage is scored on (None: a split of its training file)."""
    data = recipe.stages[name].settings.get("data") or {}
    return data.get("validation") if isinstance(data, dict) else None


def baseline_of(recipe: GraphRecipe, name: str, baselines: list[str]) -> str | None:
    """The baseline a stage's retention is of: the only one, else the one scored on the same file."""
    if len(baselines) == 1:
        return baselines[0]
    mine = validation_file(recipe, name)
    return next((b for b in baselines if mine is not None and validation_file(recipe, b) == mine), None)


def with_retention(recipe: GraphRecipe, rows: dict[str, dict | None], baselines: list[str]) -> list[dict]:
    """The finished rows, each with its baseline stage and its score's ratio to that stage's."""
    done = []
    for name, row in rows.items():
        if row is not None:
            base = baseline_of(recipe, name, baselines)
            if base and rows[base]["metric"] != row["metric"]:
                raise SystemExit(f"{name} is scored on {row['metric']}, its baseline {base} on "
                                 f"{rows[base]['metric']}: name one --baseline per validation file")
            ratio = row["score"] / rows[base]["score"] if base else None
            done.append(row | {"baseline": base or "-", "retention": ratio})
    return done


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--baseline`` may be repeated: one per validation file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--baseline", required=True, nargs="+", action="extend",
                        help="the stage(s) the retention is relative to (one per validation file)")
    parser.add_argument("--name", required=True, help="results stem (e.g. trials/tasks_qnli_diagnosis)")
    parser.add_argument("--run", action="store_true", help="run the recipe first")
    parser.add_argument("--note", default="", help="a paragraph for the report (what else was measured)")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override a recipe key, dotted (stages.qnli-dense.train.lr=1e-4)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    recipe = load_graph(args.recipe, dotted_overrides(args.assignments))
    if unknown := [b for b in args.baseline if b not in recipe.stages]:
        raise SystemExit(f"{args.recipe}: no stage named {unknown[0]!r}")
    if args.run:
        run_graph(recipe)
    names = [n for n, spec in recipe.stages.items() if spec.kind == "finetune"]
    rows = {name: stage_row(recipe, name) for name in names}
    if unfinished := [b for b in args.baseline if rows.get(b) is None]:
        raise SystemExit(f"the baseline stage {unfinished[0]} has not finished: run with --run")
    done = with_retention(recipe, rows, args.baseline)
    missing = [name for name, row in rows.items() if row is None]
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is printed above the command, not inside it
        at = argv.index("--note")
        argv = [*argv[:at], "--note", "<the paragraph above>", *argv[at + 2:]]
    command = shlex.join(["python", "benchmarks/recipe_report.py", *argv])
    recipe_path = str(args.recipe.resolve().relative_to(ROOT) if args.recipe.resolve().is_relative_to(ROOT)
                      else args.recipe)
    payload = {"benchmark": "recipe", "recipe": recipe_path, "baseline": args.baseline, "rows": done,
               "not_finished": missing, "note": args.note, "command": command}
    md = (f"# {Path(args.name).name}: the fine-tuning stages of `{recipe_path}`\n\n"
          f"Validation score of each stage and its retention of its baseline stage (what each stage asks: "
          f"the recipe's comments).\n\n" + markdown_table([r | {"lr": f"{r['lr']:g}"} for r in done], COLUMNS)
          + (f"\nNot finished: {', '.join(missing)}.\n" if missing else "")
          + (f"\n{args.note}\n" if args.note else "")
          + f"\nCommand: `{command}`.\n")
    write_results(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
