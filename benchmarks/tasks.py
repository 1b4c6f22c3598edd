"""One sparse pre-trained model, many tasks (#20): dense MiniLM vs the *same* Prune OFA sparse
pre-trained MiniLM at 80 % and 90 % (mask locked), each fine-tuned with the same
budget on SST-2, QNLI, WNUT-17 and SQuAD v1.1, then exported to ONNX int8. As in Prune OFA,
the sparse models are fine-tuned by task distillation from the dense model of the same task.

The stages are ``recipes/tasks.yaml``'s: a task's ``<task>-dense`` fine-tune is its budget for
every model; this script adds each model's fine-tune, int8 ONNX export, evaluations, benchmark
and test predictions, and runs them by ``distilprune run``'s engine (finished stages are skipped,
a changed setting re-runs what it changes, so the script resumes); ``--tasks`` picks tasks,
``--models`` models, ``--set`` overrides any key of the built recipe. Results:
``benchmarks/results/tasks.{json,md,png}`` (a ``summary`` keyed by task) and the predictions on
the unlabelled test files, ``predictions_<task>_<model>.<tsv|conll|json>``.

    python benchmarks/tasks.py                       # all tasks (hours on 2 CPUs)
    python benchmarks/tasks.py --tasks wnut17 sst2   # a part; rerun to add the others
    python benchmarks/tasks.py --pretrain-steps 800 --name trials/tasks_broad --tasks squad qnli
    python benchmarks/tasks.py --steps-scale 2 --tasks qnli   # QNLI's rows replaced at twice its steps

Each task's rows share one budget: re-running a task at another one replaces all of its rows, and
the table lists each task's budget and command. ``--report-only`` rewrites the table from its json.

``--pretrain-steps N`` makes the sparse models here (the recipe's ``head``, ``sparse80`` and
``sparse90`` stages, ``--pretrain KEY=VALUE`` changing both pre-trainings) instead of taking
``prune.py``'s: Prune OFA general distillation of MiniLM into its pruned self (unstructured,
activation criterion, the schedule ending at half way) on a corpus that covers the tasks' domains
(``broad_corpus``: SQuAD training-article paragraphs, QNLI training pairs, SST-2, WNUT-17 and the
disaster tweets) at sequence length 128, on the every-layer hidden-state cosine. They checkpoint
every 100 steps; a killed run continues with ``--pretrain train.resume=true``.

Validation splits: SST-2 ``dev.tsv``; WNUT-17 ``dev.conll``; QNLI 15 % of ``train.tsv``
(seed 42, written to the work directory); SQuAD by article (``split_by_article``, seed 42), the
first ``--squad-val`` questions of the held-out articles.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DATA, RESULTS, ROOT, WORK, graph_recipe, run_main, write_results

from distilprune.config import dotted_overrides, load_yaml, merge
from distilprune.errors import require
from distilprune.jobs.graph import GraphRecipe, run_graph, with_upstream
from distilprune.jobs.staging import UNHASHED
from distilprune.reporting.formatting import markdown_table

RECIPE = ROOT / "benchmarks" / "recipes" / "tasks.yaml"
SPARSE = WORK / "prune609"  # prune.py's sparse pre-trained models (150 steps on the tweet corpus)
SPARSE_COMMAND = ("python benchmarks/prune.py --threads 1 --work benchmarks/work/prune609 --only "
                  "block:0.80 block:0.90 --variants ofa --gd-only")
SPARSITIES = {"sparse80": 0.8, "sparse90": 0.9}
MODELS = ("dense", *SPARSITIES)
TASKS = ("sst2", "qnli", "wnut17", "squad")  # the order of the tables
KINDS = ("fp32", "int8", "engine")  # PyTorch fp32, ONNX Runtime dynamic int8, the sparse int8 engine


@dataclass
class Task:
    """A task's files and metric (its budget is the recipe's ``<task>-dense`` stage)."""

    name: str
    train: Path
    validation: Path
    test: Path
    metric: str
    suffix: str  # of the predictions file


def tasks(work: Path, squad_train: int, squad_val: int) -> dict[str, Task]:
    qnli_train, qnli_val = split_qnli(work / "data")
    squad_train_file, squad_val_file = split_squad(work / "data", squad_train, squad_val)
    return {
        "wnut17": Task("wnut17", DATA / "wnut17/train.conll", DATA / "wnut17/dev.conll",
                       DATA / "wnut17/test.tokens", "f1", "conll"),
        "sst2": Task("sst2", DATA / "sst2/train.tsv", DATA / "sst2/dev.tsv", DATA / "sst2/test.tsv",
                     "accuracy", "tsv"),
        "qnli": Task("qnli", qnli_train, qnli_val, DATA / "qnli/test.tsv", "accuracy", "tsv"),
        "squad": Task("squad", squad_train_file, squad_val_file, DATA / "squad/test-questions.json", "f1",
                      "json"),
    }


def split_qnli(folder: Path) -> tuple[Path, Path]:
    """QNLI train.tsv cut 85/15 (stratified, seed 42) into the work directory, GLUE layout kept."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    train, val = folder / "qnli_train.tsv", folder / "qnli_val.tsv"
    if not val.is_file():
        frame = pd.read_csv(DATA / "qnli/train.tsv", sep="\t", quoting=3, keep_default_na=False)
        fit, held = train_test_split(frame, test_size=0.15, random_state=42, stratify=frame["label"])
        folder.mkdir(parents=True, exist_ok=True)
        fit.to_csv(train, sep="\t", index=False, quoting=3)
        held.to_csv(val, sep="\t", index=False, quoting=3)
    return train, val


def split_squad(folder: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    """SQuAD train.json split by article (seed 42): the first ``n_train`` questions of the training
    articles and ``n_val`` of the held-out ones, as SQuAD JSON files in the work directory."""
    from distilprune.tasks.qa import read_squad, split_by_article

    train, val = folder / f"squad_train{n_train}.json", folder / f"squad_val{n_val}.json"
    if not val.is_file():
        fit, held = split_by_article(read_squad(DATA / "squad/train.json"), 0.1, 42)
        folder.mkdir(parents=True, exist_ok=True)
        write_squad(train, fit[:n_train])
        write_squad(val, held[:n_val])
    return train, val


def write_squad(path: Path, examples: list) -> None:
    articles: dict[str, list] = {}
    for ex in examples:
        articles.setdefault(ex.title, []).append({"context": ex.context, "qas": [
            {"id": ex.id, "question": ex.question, "answers": ex.answers}]})
    payload = {"version": "1.1", "data": [{"title": t, "paragraphs": p} for t, p in articles.items()]}
    path.write_text(json.dumps(payload))


def broad_corpus(folder: Path) -> Path:
    """One text per line from every task's *training* data (no validation text): SQuAD paragraphs
    of the training articles in pieces of at most 100 words, QNLI question + sentence, 10,000 SST-2
    phrases of 8+ words, WNUT-17 sentences and the disaster tweets. Rebuilt on every call; the
    file is named by its content's digest, so the distillation command (and its stage) changes
    whenever the corpus does."""
    import hashlib

    import pandas as pd

    from distilprune.tasks.ner import read_conll
    from distilprune.tasks.qa import read_squad, split_by_article

    fit, _ = split_by_article(read_squad(DATA / "squad/train.json"), 0.1, 42)
    words = [c.split() for c in dict.fromkeys(ex.context for ex in fit)]
    texts = [" ".join(w[i:i + 100]) for w in words for i in range(0, len(w), 100)]
    qnli = pd.read_csv(split_qnli(folder)[0], sep="\t", quoting=3, keep_default_na=False)
    texts += (qnli["question"] + " " + qnli["sentence"]).tolist()
    sst2 = pd.read_csv(DATA / "sst2/train.tsv", sep="\t", quoting=3)["sentence"]
    texts += sst2[sst2.str.split().str.len() >= 8].head(10_000).tolist()  # phrases: a share, not most
    texts += [" ".join(sentence.tokens) for sentence in read_conll(DATA / "wnut17/train.conll")]
    texts += pd.read_csv(DATA / "disaster_tweets/train.csv")["text"].tolist()
    content = "\n".join(" ".join(str(t).split()) for t in texts) + "\n"
    path = folder / f"corpus-{hashlib.sha256(content.encode()).hexdigest()[:12]}.txt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return path


def pretrain_stages(stages: dict[str, Any], args: argparse.Namespace, corpus: Path) -> dict[str, Any]:
    """The recipe's MLM head and sparse pre-training stages with this run's steps, corpus and
    ``--pretrain`` settings."""
    made = {"head": stages["head"]}
    for name in SPARSITIES:
        run = {"corpus": {"files": [str(corpus)]}, "train": {"max_steps": args.pretrain_steps}}
        made[name] = merge(merge(stages[name], run), dotted_overrides(args.pretrain), keep_none=True)
    return made


def model_stages(task: Task, model: str, dense: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One model's stages on one task: its fine-tune (a sparse model's with the mask locked, as in
    Prune OFA task-distilled from the dense model of the same task, at the task's learning rate
    times ``--sparse-lr-scale``), int8 ONNX and sparse-engine exports, their evaluations beside the
    fp32 model's, benchmark, test predictions."""
    name, validation = f"{task.name}-{model}", str(task.validation)
    tune = copy.deepcopy(dense)
    if model != "dense":
        tune["from"] = {"teacher": f"{task.name}-dense"}
        if args.pretrain_steps:
            tune["from"]["model"] = model
            del tune["model"]
        else:
            tune["model"] = str(SPARSE / f"gd-block-{SPARSITIES[model]:.2f}")
        tune["lock_sparsity"] = True
        tune["train"]["lr"] = float(f"{dense['train']['lr'] * args.sparse_lr_scale:g}")
    onnx, engine = f"{name}-onnx-int8", f"{name}-sparse-engine"
    stages = {name: tune,
              onnx: {"kind": "export", "from": {"model": name}, "int8": True, "data": validation,
                     "limit": 200},
              engine: {"kind": "export", "from": {"model": name}, "format": "sparse", "data": validation,
                       "limit": 200},
              f"{name}-bench": {"kind": "benchmark", "from": {"models": [name, onnx, engine]},
                                "data": validation, "threads": args.threads, "limit": 64,
                                "batch_sizes": [1, 8], "repeats": 10}}
    for kind, source in (("fp32", name), ("int8", onnx), ("engine", engine)):
        reads = {"from": {"model": source}}
        stages[f"{name}-eval-{kind}"] = {"kind": "evaluate", **reads, "data": validation}
        stages[f"{name}-predict-{kind}"] = {"kind": "predict", **reads, "data": str(task.test)}
    return stages


def dense_stage(body: dict[str, Any], task: Task, steps_scale: float) -> dict[str, Any]:
    """A task's ``<task>-dense`` stage on its split files, its steps times ``steps_scale``."""
    body = merge(body, {"data": {"train": str(task.train), "validation": str(task.validation)}})
    body["train"]["max_steps"] = round(body["train"]["max_steps"] * steps_scale)
    return body


def build_recipe(args: argparse.Namespace, table: dict[str, Task], corpus: Path | None) -> GraphRecipe:
    """``recipes/tasks.yaml`` grown into every (task, model)'s stages for this run."""
    data = load_yaml(RECIPE)
    stages = pretrain_stages(data["stages"], args, corpus) if args.pretrain_steps else {}
    for task in table.values():
        dense = dense_stage(data["stages"][f"{task.name}-dense"], task, args.steps_scale)
        for model in MODELS:
            stages |= model_stages(task, model, dense, args)
    return graph_recipe({"stages": stages}, {"out": str(args.work)}, args)


def budget(recipe: GraphRecipe, task: Task, args: argparse.Namespace) -> str:
    """A task's budget in words, from its dense stage's settings."""
    settings = recipe.stages[f"{task.name}-dense"].settings
    data = {k: v for k, v in settings["data"].items() if k not in ("train", "validation")}
    parts = [f"{k} {v}" for k, v in {**settings["train"], **data}.items() if v is not None]
    return (f"{', '.join(parts)}; train {task.train.name}, validation {task.validation.name}; sparse: mask "
            f"locked, task-distilled from dense, lr x {args.sparse_lr_scale:g}")


def run_model(recipe: GraphRecipe, task: Task, model: str, work: Path) -> dict[str, Any]:
    """Fine-tune, evaluate and time one model on one task in every kind (:data:`KINDS`)."""
    name = f"{task.name}-{model}"
    run_graph(recipe, with_upstream(recipe, [*(f"{name}-eval-{kind}" for kind in KINDS), f"{name}-bench"]))
    row: dict[str, Any] = {"task": task.name, "model": model, "metric": task.metric}
    for kind in KINDS:
        metrics = json.loads((work / f"{name}-eval-{kind}" / "metrics.json").read_text())
        scale = 100 if task.name == "squad" else 1  # SQuAD's official scores are percentages
        row[kind] = metrics[task.metric] / scale
        if task.name == "squad":
            row[f"{kind}_exact_match"] = metrics["exact_match"] / scale
    bench = json.loads((work / f"{name}-bench" / "benchmark.json").read_text())["models"]
    for result, kind in zip(bench, KINDS, strict=True):
        row[f"{kind}_b1_ms"] = result["latency"]["1"]["p50_ms"]
        row[f"{kind}_b8_ms"] = result["latency"]["8"]["p50_ms"]
        row[f"{kind}_mb"] = result["size_bytes"] / 1e6
    row["sparsity"] = json.loads((work / name / "distilprune.json").read_text()).get("sparsity")
    return row


def predict_test(recipe: GraphRecipe, task: Task, model: str, kind: str, work: Path) -> Path:
    stage = f"{task.name}-{model}-predict-{kind}"
    run_graph(recipe, with_upstream(recipe, [stage]))
    target = RESULTS / f"predictions_{task.name}_minilm-{model}-{kind}.{task.suffix}"
    shutil.copyfile(work / stage / f"predictions.{task.suffix}", target)
    return target


def task_summary(by: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One task's scores (fp32 unless int8) and retentions, ``by`` model name."""
    score = {key: by.get(model, {}).get(kind) for key, model, kind in (
        ("dense", "dense", "fp32"), ("sparse80", "sparse80", "fp32"), ("sparse90", "sparse90", "fp32"),
        ("sparse90_int8", "sparse90", "int8"))}
    dense = score["dense"]
    retention = {f"retention{n}": score[f"sparse{n}"] / dense if score[f"sparse{n}"] is not None and dense
                 else None for n in (80, 90)}
    return {"metric": next(iter(by.values()))["metric"], **score, **retention}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: the metric of dense / sparse80 / sparse90 (fp32), sparse90 int8 and retentions."""
    tasks_ = dict.fromkeys(r["task"] for r in rows)
    return {t: task_summary({r["model"]: r for r in rows if r["task"] == t}) for t in tasks_}


def plot(summary_: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distilprune.io import save_png

    names = list(summary_)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, key in enumerate(("dense", "sparse80", "sparse90", "sparse90_int8")):
        values = [summary_[t][key] or 0 for t in names]
        ax.bar([x + i * 0.2 for x in range(len(names))], values, width=0.2, label=key)
    ax.set_xticks([x + 0.3 for x in range(len(names))],
                  [f"{t} ({summary_[t]['metric']})" for t in names])
    ax.set_ylim(0, 1)
    ax.set_title("MiniLM-L6: dense vs Prune OFA sparse (mask locked), same budget")
    ax.legend(fontsize=8, ncol=4, loc="lower center")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def not_run(rows: list[dict[str, Any]], table: dict[str, Any]) -> str:
    """A markdown line naming the (task, model) cells with no result yet."""
    done = {(r["task"], r["model"]) for r in rows}
    missing = [f"{t} {m}" for t in table for m in MODELS if (t, m) not in done]
    return f"\nNot run yet: {', '.join(missing)}.\n" if missing else ""


def sparse_source(args: argparse.Namespace, recipe: GraphRecipe) -> str:
    """The sparse pre-trained models of this run in words, for the report."""
    if not args.pretrain_steps:
        return ("80 % and 90 % 1x4-block sparsity (`benchmarks/work/prune609/gd-block-*`: 150 steps on "
                f"the tweet corpus, `{SPARSE_COMMAND}`)")
    prune = recipe.stages["sparse80"].settings["prune"]
    pattern = "1x4-block" if prune["method"] == "block" else prune["method"]
    changed = "".join(f", {item}" for item in args.pretrain or []  # not how or where it runs
                      if item.partition("=")[0].rpartition(".")[2] not in UNHASHED)
    return (f"80 % and 90 % {pattern} sparsity ({prune.get('criterion', 'magnitude')} criterion), made here: "
            f"{args.pretrain_steps} steps of `recipes/tasks.yaml`'s sparse80 / sparse90 (distill_mlm"
            f"{changed}) on `broad_corpus` (SQuAD training paragraphs, QNLI training pairs, SST-2, "
            "WNUT-17, tweets)")


def command() -> str:
    return shlex.join(["python", "benchmarks/tasks.py", *sys.argv[1:]])


def commands_section(commands: dict[str, str]) -> str:
    """The command that made the table, or each task's when they differ."""
    if len(set(commands.values())) == 1:
        return f"Command: `{next(iter(commands.values()))}`"
    return "Commands:\n\n" + "\n".join(f"- {task}: `{line}`" for task, line in commands.items())


def report(rows: list[dict[str, Any]], budgets: dict[str, Any], commands: dict[str, str],
           args: argparse.Namespace, recipe: GraphRecipe, latest: str | None = None) -> None:
    """Write results/NAME.{json,md,png}; ``latest``: the command of the last run (this one's)."""
    table = summary(rows)
    budgets, commands = ({t: by[t] for t in TASKS if t in by} for by in (budgets, commands))
    payload = {"benchmark": "tasks", "summary": table, "rows": rows, "budgets": budgets,
               "sparse_models": sparse_source(args, recipe), "command": latest or command(),
               "commands": commands,
               "threads": args.threads, "conditions": args.conditions}
    pct = [{"task": t, "metric": s["metric"], **{k: s[k] for k in ("dense", "sparse80", "sparse90",
                                                                   "sparse90_int8")},
            "retention80": s["retention80"], "retention90": s["retention90"]} for t, s in table.items()]
    cols = ["task", "model", "sparsity", *KINDS,
            *(f"{k}_{what}" for what in ("b1_ms", "b8_ms", "mb") for k in KINDS)]
    md = ("# One sparse pre-trained model, many tasks\n\n"
          "MiniLM-L6 (`minilm-l6`) dense vs the same model after Prune OFA general distillation at "
          f"{sparse_source(args, recipe)}, each fine-tuned with the "
          "sparsity mask locked, the same budget (steps, batch, sequence length) as the dense model "
          "and task distillation from it (T=2, 0.5 soft + 0.5 hard) at the learning rate in Budgets; "
          "int8 = ONNX Runtime dynamic int8 export; engine = distilprune's sparse int8 engine (`export "
          "--format sparse`: the encoder Linears on 1x4-block int8 kernels, int8 embeddings). "
          f"Latency: p50 ms, batch 1 and 8, {args.threads} thread(s), pre-tokenized validation "
          "inputs. "
          f"Conditions: {args.conditions}.\n\n"
          "## Retention (Prune OFA paper form: task x sparsity)\n\n"
          + markdown_table(pct, ["task", "metric", "dense", "sparse80", "sparse90", "sparse90_int8",
                                 "retention80", "retention90"])
          + "\n## Every model\n\n" + markdown_table(rows, cols)
          + not_run(rows, table)
          + "\n## Budgets\n\n" + "\n".join(f"- {t}: {b}" for t, b in budgets.items()) + "\n\n"
          f"{commands_section(commands)}\n\n"
          f"![scores]({Path(args.name).name}.png)\n")
    write_results(args.name, payload, md)
    plot(table, RESULTS / f"{args.name}.png")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["dense", "sparse90", "sparse80"],
                        help="the sparse models are task-distilled from the dense one (made first)")
    parser.add_argument("--sparse-lr-scale", type=float, default=2.0,
                        help="sparse fine-tunes use the task's learning rate times this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--squad-train", type=int, default=12000, help="training questions")
    parser.add_argument("--squad-val", type=int, default=1000, help="validation questions")
    parser.add_argument("--work", type=Path, default=WORK / "tasks")
    parser.add_argument("--conditions", default="2 CPUs shared with other jobs")
    parser.add_argument("--pretrain-steps", type=int,
                        help="make the sparse models here on the broad corpus in this many steps "
                             "(else: prune.py's)")
    parser.add_argument("--pretrain", action="append", metavar="KEY=VALUE",
                        help="a setting of both sparse pre-trainings, dotted (train.lr=5e-4)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="every task's max_steps times this (dense and sparse alike)")
    parser.add_argument("--name", default="tasks",
                        help="results stem; test predictions are written for 'tasks' only")
    parser.add_argument("--data-only", action="store_true",
                        help="write the validation splits and the broad corpus to WORK/data and stop "
                             "(what the recipes under benchmarks/recipes/tasks_* read)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results/NAME.{md,png} from NAME.json, running nothing")
    parser.add_argument("--set", dest="assignments", action="append", metavar="KEY=VALUE",
                        help="override any key of the built recipe, dotted (stages.sst2-dense.train.lr=1e-4)")
    return parser.parse_args()


def previous_results(path: Path, source: str) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str],
                                                    dict[str, Any]]:
    """The rows, budgets, commands (by task) and whole payload of an earlier run of the same results
    stem, to grow them; none when its sparse models came from elsewhere (one table never mixes two
    pre-trainings)."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if previous.get("sparse_models") != source:
        if previous:
            print(f"{path.name}: its sparse models were made otherwise; starting a new table")
        return [], {}, {}, {}
    commands = previous.get("commands") or dict.fromkeys(previous["budgets"], previous["command"])
    return previous["rows"], previous["budgets"], commands, previous


def in_table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by task (:data:`TASKS`), then model (:data:`MODELS`), however the runs came."""
    return sorted(rows, key=lambda r: (TASKS.index(r["task"]), MODELS.index(r["model"])))


def keep_same_budget(rows: list[dict[str, Any]], budgets: dict[str, str], task: str,
                     now: str) -> list[dict[str, Any]]:
    """``rows`` without ``task``'s when they were made with another budget than ``now`` (one task's
    rows never mix two budgets: its dense model is every sparse model's teacher and reference)."""
    if budgets.get(task, now) == now:
        return rows
    print(f"{task}: its budget changed; its earlier rows are dropped")
    return [r for r in rows if r["task"] != task]


def main() -> None:
    args = parse_args()
    table = tasks(args.work, args.squad_train, args.squad_val)
    if args.data_only:
        print(f"-> {args.work / 'data'}: {broad_corpus(args.work / 'data').name} and the splits")
        return
    corpus = broad_corpus(args.work / "data") if args.pretrain_steps else None
    recipe = build_recipe(args, table, corpus)
    rows, budgets, commands, previous = previous_results(RESULTS / f"{args.name}.json",
                                                         sparse_source(args, recipe))
    if args.report_only:
        require(bool(rows), f"--report-only: no results/{args.name}.json made with these sparse models")
        args.conditions = previous["conditions"]
        return report(in_table_order(rows), budgets, commands, args, recipe, previous["command"])
    for name in args.tasks:
        task = table[name]
        now = budget(recipe, task, args)
        rows = keep_same_budget(rows, budgets, name, now)
        budgets[name], commands[name] = now, command()
        for model in args.models:
            row = run_model(recipe, task, model, args.work)
            rows = in_table_order([r for r in rows if (r["task"], r["model"]) != (name, model)] + [row])
            report(rows, budgets, commands, args, recipe)
        if args.name != "tasks":
            continue
        best = max((r for r in rows if r["task"] == name and r["model"] != "dense"),
                   key=lambda r: r["int8"], default=None)
        predict_test(recipe, task, "dense", "fp32", args.work)
        if best is not None:
            predict_test(recipe, task, best["model"], "int8", args.work)


if __name__ == "__main__":
    run_main(main)
