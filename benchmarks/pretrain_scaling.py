"""How a locked fine-tune's score grows with the sparse pre-training budget (#20): every mask-locked
fine-tuning row of the given trials against the steps of the Prune OFA pre-training it started
from, one log-linear fit per pruning setting (score = a + b ln steps), and the steps at which
each fit reaches the retention target.

    python benchmarks/pretrain_scaling.py --name trials/tasks_qnli_scaling --target 0.97 \\
        tasks_qnli_diagnosis tasks_qnli_unstructured tasks_qnli_long tasks_qnli_longer

Reads ``results/trials/<trial>.json`` (written by ``recipe_report.py`` with the trial's recipe, or
by ``tasks.py --pretrain-steps N``: its ``--task`` rows, pre-trained by ``recipes/tasks.yaml``'s
sparse80 / sparse90); writes ``results/<name>.{json,md,png}``. Runs nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, result_path, run_main, write_results

from distilprune.config import load_yaml
from distilprune.errors import require, require_file
from distilprune.jobs.staging import UNHASHED
from distilprune.reporting.formatting import markdown_table


def pretraining(recipe: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """Steps and pruning setting of the ``distill_mlm`` stage a fine-tune started from (None when
    it started from something else, e.g. the dense model)."""
    spec = recipe["stages"].get(stage) or {}
    if spec.get("kind") != "distill_mlm" or not spec.get("prune"):
        return None
    prune = spec["prune"]
    setting = (f"{prune.get('method', 'unstructured')} {prune.get('criterion', 'magnitude')} "
               f"{prune['final_sparsity']:.0%}")
    return {"steps": spec["train"]["max_steps"], "setting": setting}


def tasks_points(trial: str, payload: dict[str, Any], task: str) -> tuple[list[dict[str, Any]], float]:
    """The sparse rows of one task of a ``tasks.py --pretrain-steps N`` result as points (fp32 scores),
    and its dense row's score."""
    argv = shlex.split(payload["command"])
    require("--pretrain-steps" in argv, f"trials/{trial}: its sparse models were not pre-trained by tasks.py")
    changed = [item for flag, item in zip(argv, argv[1:], strict=False) if flag == "--pretrain"
               and item.partition("=")[0].rpartition(".")[2] not in UNHASHED]  # tasks.py's rule
    require(not changed, f"trials/{trial}: pre-trained with --pretrain {changed[0] if changed else ''}: "
                         "its setting is not recipes/tasks.yaml's")
    recipe = load_yaml(ROOT / "benchmarks" / "recipes" / "tasks.yaml")
    steps = int(argv[argv.index("--pretrain-steps") + 1])
    rows = {row["model"]: row for row in payload["rows"] if row["task"] == task}
    require("dense" in rows, f"trials/{trial}: no dense {task} row")
    dense, points = rows["dense"]["fp32"], []
    for model, row in rows.items():
        if (source := pretraining(recipe, model)) is not None:
            points.append({"trial": trial, "stage": f"{task}-{model}", **source, "steps": steps,
                           "score": row["fp32"], "retention": row["fp32"] / dense})
    return points, dense


def trial_points(trial: str, task: str = "qnli") -> tuple[list[dict[str, Any]], float]:
    """The locked fine-tunes of one trial as points, and its dense baseline's score."""
    path = result_path(f"trials/{trial}", ".json")
    require_file(path, "trial results")
    payload = json.loads(path.read_text())
    if payload.get("benchmark") == "tasks":
        return tasks_points(trial, payload, task)
    recipe = load_yaml(ROOT / payload["recipe"])
    rows = {row["stage"]: row for row in payload["rows"]}
    baseline = payload["baseline"]  # one stage name (older results) or a list of them
    dense = rows[baseline if isinstance(baseline, str) else baseline[0]]["score"]
    points = []
    for row in payload["rows"]:
        source = pretraining(recipe, row["model"]) if row["lock_sparsity"] else None
        if source is not None:
            points.append({"trial": trial, "stage": row["stage"], **source, "score": row["score"],
                           "retention": row["score"] / dense})
    return points, dense


def fit(points: list[dict[str, Any]], dense: float, target: float) -> dict[str, Any] | None:
    """Least-squares ``score = a + b ln(steps)`` and the steps it puts at ``target`` x dense; with
    three budgets or more, ``recent``: the same over the two largest (a curve that flattens)."""
    budgets = sorted({p["steps"] for p in points})
    if len(budgets) < 2:
        return None
    slope, intercept = np.polyfit([math.log(p["steps"]) for p in points], [p["score"] for p in points], 1)
    needed = math.exp((target * dense - intercept) / slope) if slope > 0 else None
    largest = [p for p in points if p["steps"] in budgets[-2:]]
    recent = fit(largest, dense, target) if len(budgets) > 2 else None
    return {"intercept": float(intercept), "per_doubling": float(slope * math.log(2)),
            "steps_for_target": round(needed) if needed else None, "recent": recent}


def plot(points: list[dict[str, Any]], fits: dict[str, Any], dense: float, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting in sorted({p["setting"] for p in points}):
        mine = [p for p in points if p["setting"] == setting]
        dots = ax.plot([p["steps"] for p in mine], [p["score"] for p in mine], "o", label=setting)[0]
        if (line := fits.get(setting)) is not None:
            end = max(line["steps_for_target"] or 0, max(p["steps"] for p in mine)) * 1.2
            xs = np.geomspace(min(p["steps"] for p in mine), end, 50)
            ax.plot(xs, line["intercept"] + line["per_doubling"] / math.log(2) * np.log(xs), "--",
                    color=dots.get_color(), alpha=0.7)
    ax.axhline(dense, color="black", lw=1, label=f"dense ({dense:.4f})")
    ax.axhline(target * dense, color="gray", ls=":", label=f"{target:.0%} of dense")
    ax.set(xscale="log", xlabel="sparse pre-training steps (batch 32, seq 128)",
           ylabel="locked fine-tune score (validation)", title="Score vs Prune OFA pre-training budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", nargs="+", help="trial names under results/trials/")
    parser.add_argument("--name", required=True, help="results/<name>.{json,md,png}")
    parser.add_argument("--target", type=float, default=0.97, help="retention target (share of dense)")
    parser.add_argument("--task", default="qnli", help="the task of tasks.py results to read")
    args = parser.parse_args()
    points, denses, seen = [], set(), set()
    for trial in args.trials:
        found, dense = trial_points(trial, args.task)
        denses.add(round(dense, 6))
        for point in found:  # trials that share a work directory list the same stage again
            if (key := (point["stage"], point["steps"], point["score"])) not in seen:
                seen.add(key)
                points.append(point)
    require(len(denses) == 1, f"the trials have different dense baselines {sorted(denses)}: not one curve")
    dense = denses.pop()
    settings = sorted({p["setting"] for p in points})
    fits = {s: fit([p for p in points if p["setting"] == s], dense, args.target) for s in settings}
    command = (f"python benchmarks/pretrain_scaling.py --name {args.name} --target {args.target} "
               + " ".join(args.trials))
    payload = {"benchmark": "pretrain_scaling", "name": args.name, "trials": args.trials, "dense": dense,
               "target": args.target, "points": points, "fits": fits, "command": command}
    write_results(args.name, payload, render(payload))
    plot(points, fits, dense, args.target, result_path(args.name, ".png"))
    print(render(payload))


def _fit_cells(line: dict[str, Any]) -> dict[str, str]:
    steps = line["steps_for_target"]
    return {"score per doubling": f"{line['per_doubling']:+.4f}", "steps for target": f"{steps:,}" if steps
            else "never"}


def render(payload: dict[str, Any]) -> str:
    target, dense = payload["target"], payload["dense"]
    points = [{"pruning": p["setting"], "pre-training steps": f"{p['steps']:,}", "score": f"{p['score']:.4f}",
               "of dense": f"{p['retention']:.1%}", "trial/stage": f"{p['trial']}/{p['stage']}"}
              for p in sorted(payload["points"], key=lambda p: (p["setting"], p["steps"]))]
    lines = [(s, "all budgets", f) for s, f in payload["fits"].items() if f]
    lines += [(s, "the two largest", f["recent"]) for s, _, f in lines if f.get("recent")]
    fits = [{"pruning": s, "fit over": over, **_fit_cells(f)} for s, over, f in lines]
    return "\n".join([
        f"# {payload['name']}: locked score vs sparse pre-training steps", "",
        f"Dense: {dense:.4f}; target: {target:.0%} of dense ({target * dense:.4f}).", "",
        markdown_table(points, list(points[0])),
        f"Fit per pruning setting (score = a + b ln steps; the steps at which it reaches {target:.0%}):", "",
        markdown_table(fits, ["pruning", "fit over", "score per doubling", "steps for target"]),
        f"![scaling]({Path(payload['name']).name}.png)", "",
        f"Command: `{payload['command']}`", ""])


if __name__ == "__main__":
    run_main(main)
