"""Comparison study after Ojo et al. (2023): models × preprocessing × imbalance × lr × seeds.

Every grid cell is one :func:`~distilprune.jobs.finetune.finetune` run in ``out/runs/<slug>``,
staged by :mod:`distilprune.jobs.staging`: a run made from the same model, data and config is
skipped, so an interrupted study continues where it stopped. Accuracy and F1 (validation
split) are aggregated over seeds (mean ± sample std) per (model, preprocess, imbalance, lr); the
best lr per (model, preprocess, imbalance) is the one with the highest mean accuracy. Outputs: ``study.json``,
``study.md``, ``study_accuracy.png`` and the tokenizer vocabulary coverage of the tweets.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilprune.config import load_run_recipe, to_dict
from distilprune.data.coverage import vocabulary_coverage
from distilprune.data.loading import load_table
from distilprune.data.preprocess import parse_steps
from distilprune.errors import UserError, require, require_at_least
from distilprune.io import atomic_file, locked_dir, save_png, stable_hash, write_json
from distilprune.jobs.common import DataConfig, data_digests, preprocess_table
from distilprune.jobs.finetune import FinetuneConfig, finetune
from distilprune.jobs.staging import Stage, read_record, run_stage, staleness
from distilprune.models.loading import load_tokenizer
from distilprune.models.registry import resolve_model
from distilprune.train import TrainConfig

log = logging.getLogger("distilprune.study")

METRICS = ("accuracy", "f1")
RUN_METRICS = ("accuracy", "f1", "f1_macro", "precision", "recall")
IMBALANCE = ("none", "class_weights", "oversample")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


@dataclass
class StudyConfig:
    """The grid (models × preprocess × imbalance × learning_rates × seeds) and a shared budget.

    ``data.preprocess``/``data.imbalance`` and ``train.lr``/``train.seed`` are set by the grid.
    ``model_learning_rates`` replaces the lr grid for the models it names (a 12-layer model
    wants a lower lr than a 6-layer one, and each lr costs a full set of runs).
    ``max_runs`` caps the runs *trained* per invocation (rerun to continue; 0 only reports).
    """

    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    models: list[str] = field(default_factory=list)
    preprocess: list[list[str]] = field(default_factory=lambda: [[]])
    imbalance: list[str] = field(default_factory=lambda: ["none"])
    learning_rates: list[float] = field(default_factory=lambda: [5e-5])
    model_learning_rates: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    train: TrainConfig = field(default_factory=TrainConfig)
    max_runs: int | None = None
    keep_models: bool = False
    lock_sparsity: bool = False
    eval_batch_size: int = 64
    threads: int | None = None
    coverage: bool = True

    def __post_init__(self) -> None:
        for name in ("models", "preprocess", "imbalance", "learning_rates", "seeds"):
            values = getattr(self, name)
            require(bool(values), f"{name} must list at least one value")
            require(len({repr(v) for v in values}) == len(values), f"{name} has duplicates: {values}")
        bad = [v for v in self.imbalance if v not in IMBALANCE]
        require(not bad, f"imbalance values must be none, class_weights or oversample, got {bad}")
        unknown = [m for m in self.model_learning_rates if m not in self.models]
        require(not unknown, f"model_learning_rates names models that are not in models: {unknown}")
        for model, lrs in self.model_learning_rates.items():
            require(bool(lrs) and len(set(lrs)) == len(lrs),
                    f"model_learning_rates[{model}] must list distinct values, got {lrs}")
        lrs = [lr for grid in (self.learning_rates, *self.model_learning_rates.values()) for lr in grid]
        require(all(lr > 0 for lr in lrs), "learning rates must be positive")
        require(self.max_runs is None or self.max_runs >= 0, "max_runs must be >= 0")
        require_at_least("threads", self.threads, 1)
        require_at_least("eval_batch_size", self.eval_batch_size, 1)
        require(not self.data.preprocess and self.data.imbalance == "none",
                "set preprocessing and imbalance at the study level (preprocess: [[], [tweet]], "
                "imbalance: [none, class_weights]), not under data:")
        steps = [tuple(parse_steps(v)) for v in self.preprocess]  # unknown steps fail here
        require(len(set(steps)) == len(steps), f"preprocess variants repeat steps: {self.preprocess}")


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    model: str
    preprocess: tuple[str, ...]
    imbalance: str
    lr: float
    seed: int


def load_study_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a study recipe; ``out`` defaults to ``runs/<recipe name>``."""
    return load_run_recipe(path, StudyConfig, overrides, "study")


# ----------------------------------------------------------------------------- naming
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def model_label(model: str) -> str:
    """Short display name: the alias, the directory name or the hub ID."""
    path = Path(model).expanduser()
    return path.name if path.exists() else model


def model_labels(models: list[str]) -> dict[str, str]:
    """Display names, with the parent directory added where two directories share a name."""
    labels = {m: model_label(m) for m in models}
    clashes = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {m: "/".join(Path(m).expanduser().resolve().parts[-2:]) if label in clashes else label
            for m, label in labels.items()}


def preprocess_label(variant: list[str] | tuple[str, ...]) -> str:
    """``[]`` → ``none``; ``[keyword, tweet]`` → ``keyword+tweet``."""
    return "+".join(variant) or "none"


def _model_slug(model: str) -> str:
    if Path(model).expanduser().exists():  # directories: name + path hash (two "model" dirs differ)
        return f"{_safe(model_label(model))}-{stable_hash(str(Path(model).resolve()), 6)}"
    return _safe(model.replace("/", "--"))


def run_slug(cell: Cell) -> str:
    """``<model>__<preprocess>__<imbalance>__lr<lr>__s<seed>``."""
    return "__".join([_model_slug(cell.model), _safe(preprocess_label(cell.preprocess)),
                      cell.imbalance, f"lr{cell.lr:g}", f"s{cell.seed}"])


def grid(cfg: StudyConfig) -> Iterator[Cell]:
    """All cells, model-major (cheaper models first if listed first)."""
    for model in cfg.models:
        for variant in cfg.preprocess:
            for imbalance in cfg.imbalance:
                for lr in cfg.model_learning_rates.get(model, cfg.learning_rates):
                    for seed in cfg.seeds:
                        yield Cell(model, tuple(variant), imbalance, lr, seed)


# ----------------------------------------------------------------------------- runs
def run_config(cfg: StudyConfig, cell: Cell) -> FinetuneConfig:
    """The fine-tuning config of one cell (shared data/budget, the cell's grid values)."""
    data = dataclasses.replace(cfg.data, preprocess=list(cell.preprocess), imbalance=cell.imbalance)
    train = dataclasses.replace(cfg.train, lr=cell.lr, seed=cell.seed, checkpoint_dir=None)
    return FinetuneConfig(model=cell.model, out=str(Path(cfg.out) / "runs" / run_slug(cell)), data=data,
                          train=train, lock_sparsity=cfg.lock_sparsity,
                          eval_batch_size=cfg.eval_batch_size, overwrite=True)


def model_fingerprint(model: str) -> str | None:
    """Digest of a model directory's config/metadata and file sizes (``None`` for hub IDs)."""
    path = Path(resolve_model(model))
    if not path.is_dir():
        return None
    texts = {n: (path / n).read_text() for n in ("config.json", "distilprune.json") if (path / n).is_file()}
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    return stable_hash({"texts": texts, "sizes": sizes})


def run_stage_of(run_cfg: FinetuneConfig, fingerprint: str | None, digests: list[str]) -> Stage:
    """A run's stage; what determines its result: model (+ directory digest), data digests (not
    paths), config."""
    config = to_dict(run_cfg)
    config["data"] = {k: v for k, v in config["data"].items() if k not in ("train", "validation")}
    out = Path(run_cfg.out)
    return Stage(out.name, out, {"model": run_cfg.model, "fingerprint": fingerprint, "data": digests,
                                 "config": config})


@dataclass
class PlannedRun:
    """A cell with its stage (run directory, inputs) and model display name."""

    cell: Cell
    stage: Stage
    label: str

    @property
    def out(self) -> Path:
        return self.stage.out


def _drop_weights(out: Path) -> None:
    for path in out.iterdir():
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            path.unlink(missing_ok=True)


def _record(planned: PlannedRun, status: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    cell = planned.cell
    row: dict[str, Any] = {"slug": planned.out.name, "model": planned.label,
                           "preprocess": preprocess_label(cell.preprocess), "imbalance": cell.imbalance,
                           "lr": cell.lr, "seed": cell.seed, "status": status}
    if summary:
        row["metrics"] = {k: summary["metrics"][k] for k in RUN_METRICS}
        row.update(steps=summary["train"]["steps"], seconds=summary["train"]["seconds"])
    return row


def execute_run(cfg: StudyConfig, cell: Cell) -> dict[str, Any]:
    """Fine-tune one cell (its metadata names the cell), drop the weights if asked."""
    run_cfg = run_config(cfg, cell)
    summary = finetune(run_cfg, metadata={"study": {"cell": dataclasses.asdict(cell)}})
    if not cfg.keep_models:
        _drop_weights(Path(run_cfg.out))
    return summary


def plan_runs(cfg: StudyConfig) -> list[PlannedRun]:
    """Every cell with its directory and hash; fails early on a missing model or data file."""
    fingerprints = {m: model_fingerprint(m) for m in cfg.models}
    digests, labels = data_digests(cfg.data), model_labels(cfg.models)
    plan = []
    for cell in grid(cfg):
        stage = run_stage_of(run_config(cfg, cell), fingerprints[cell.model], digests)
        plan.append(PlannedRun(cell, stage, labels[cell.model]))
    return plan


def _run_all(cfg: StudyConfig, plan: list[PlannedRun],
             on_progress: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Skip finished cells, train the others (at most ``max_runs``); returns the run records."""
    runs = []
    for p in plan:
        record = read_record(p.out)
        summary = record["summary"] if record and staleness(p.stage, record) is None else None
        runs.append(_record(p, "pending" if summary is None else "skipped", summary))
    pending = [i for i, run in enumerate(runs) if run["status"] == "pending"]
    todo = pending[:cfg.max_runs]
    log.info("study: %d runs, %d finished, %d to train now", len(plan), len(plan) - len(pending), len(todo))
    for done, i in enumerate(todo, start=1):
        planned, start = plan[i], time.perf_counter()
        summary = run_stage(planned.stage, lambda p=planned: execute_run(cfg, p.cell),
                            "not run yet, or made from other inputs")["summary"]
        runs[i] = _record(planned, "ran", summary)
        log.info("[%d/%d] %s: accuracy %.4f, F1 %.4f (%.0f s)", done, len(todo), planned.out.name,
                 summary["metrics"]["accuracy"], summary["metrics"]["f1"], time.perf_counter() - start)
        on_progress(runs)
    return runs


# ----------------------------------------------------------------------------- aggregation
def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of accuracy and F1 over seeds per (model, preprocess, imbalance, lr)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        if "metrics" in run:
            key = (run["model"], run["preprocess"], run["imbalance"], run["lr"])
            groups.setdefault(key, []).append(run)
    cells = []
    for (model, variant, imbalance, lr), members in groups.items():
        cell: dict[str, Any] = {"model": model, "preprocess": variant, "imbalance": imbalance, "lr": lr,
                                "n": len(members), "seeds": [r["seed"] for r in members]}
        for metric in METRICS:
            mean, std = _stats([r["metrics"][metric] for r in members])
            cell.update({f"{metric}_mean": mean, f"{metric}_std": std})
        cells.append(cell)
    return cells


def _score(cell: dict[str, Any]) -> tuple[float, float]:
    """Mean accuracy, then mean F1; rounded so that float noise in equal means is no tie-break."""
    return round(cell["accuracy_mean"], 9), round(cell["f1_mean"], 9)


def select_best(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, preprocess, imbalance) the lr cell with the highest mean accuracy (then F1)."""
    best: dict[tuple, dict[str, Any]] = {}
    for cell in cells:
        key = (cell["model"], cell["preprocess"], cell["imbalance"])
        if key not in best or _score(cell) > _score(best[key]):
            best[key] = cell
    return list(best.values())


# ----------------------------------------------------------------------------- coverage
def study_coverage(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Vocabulary coverage of every model tokenizer on the training texts of every variant."""
    table = load_table(cfg.data.train, cfg.data.text_column, cfg.data.label_column,
                       num_labels=cfg.data.num_labels)
    rows_to_use = list(range(min(len(table), cfg.data.limit or len(table))))
    texts = {preprocess_label(v): preprocess_table(table.subset(rows_to_use), parse_steps(v)).texts
             for v in cfg.preprocess}
    rows, labels = [], model_labels(cfg.models)
    for model in cfg.models:
        try:
            tokenizer = load_tokenizer(model)
        except UserError as exc:
            log.warning("coverage of %s skipped: %s", model, exc)
            continue
        for variant, variant_texts in texts.items():
            rows.append({"model": labels[model], "preprocess": variant,
                         **vocabulary_coverage(tokenizer, variant_texts)})
    return rows


# ----------------------------------------------------------------------------- reports
def _pm(cell: dict[str, Any], metric: str) -> str:
    return f"{cell[f'{metric}_mean']:.4f} ± {cell[f'{metric}_std']:.4f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _budget(cfg: StudyConfig) -> str:
    t = cfg.train
    length = f"max_steps {t.max_steps}" if t.max_steps else f"{t.epochs:g} epochs"
    return (f"{length}, batch {t.batch_size}, max_length {cfg.data.max_length}, "
            f"warmup {t.warmup_ratio:g}, weight decay {t.weight_decay:g}, patience {t.patience}")


def _validation(data: dict[str, Any]) -> str:
    if data.get("validation"):
        return f"the validation file {Path(data['validation']).name}"
    return f"a stratified {data['val_fraction']:.0%} validation split (seed {data['split_seed']})"


def learning_rates_line(cfg: dict[str, Any]) -> str:
    """``Learning rates: 5e-05, 0.0001 (mpnet-base: 5e-05).``"""
    labels = model_labels(cfg["models"])
    own = "; ".join(f"{labels.get(m, m)}: {', '.join(f'{lr:g}' for lr in lrs)}"
                    for m, lrs in cfg.get("model_learning_rates", {}).items())
    shared = ", ".join(f"{lr:g}" for lr in cfg["learning_rates"])
    return f"Learning rates: {shared}" + (f" ({own})." if own else ".")


def render_markdown(payload: dict[str, Any]) -> str:
    """``study.md``: best-lr table, all cells, coverage and the most split words."""
    cfg, counts = payload["config"], payload["counts"]
    lines = ["# Disaster-tweet comparison study (after Ojo et al., 2023)", "",
             f"Runs: {counts['done']}/{counts['total']} done ({counts['ran']} trained now, "
             f"{counts['skipped']} reused, {counts['pending']} pending). Budget per run: "
             f"{payload['budget']}. Seeds: {cfg['seeds']}. {learning_rates_line(cfg)} Metrics on "
             f"{_validation(cfg['data'])}, mean ± sample std over seeds.", "",
             "## Best learning rate per model × preprocessing × imbalance", "",
             "The lr is chosen on the same validation split that is reported (optimistic by a "
             "little); compare configurations, not absolute numbers.", ""]
    lines += _table(["model", "preprocess", "imbalance", "best lr", "accuracy", "F1", "seeds"],
                    [[c["model"], c["preprocess"], c["imbalance"], f"{c['lr']:g}", _pm(c, "accuracy"),
                      _pm(c, "f1"), c["n"]] for c in payload["best"]])
    lines += ["", "## All cells", ""]
    lines += _table(["model", "preprocess", "imbalance", "lr", "accuracy", "F1", "seeds"],
                    [[c["model"], c["preprocess"], c["imbalance"], f"{c['lr']:g}", _pm(c, "accuracy"),
                      _pm(c, "f1"), c["n"]] for c in payload["cells"]])
    lines += ["", "![accuracy](study_accuracy.png)", ""]
    return "\n".join(lines + coverage_markdown(payload["coverage"])) + "\n"


def coverage_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Coverage table and, per model × variant, the 20 most frequent split words."""
    if not rows:
        return []
    lines = ["## Vocabulary coverage of the tweets", "",
             "Split: a letter/digit run of a whitespace word is cut into several sub-words "
             "(punctuation cuts do not count). Hashtag/mention/URL columns: split share of those words.",
             ""]
    lines += _table(
        ["model", "preprocess", "split words", "split types", "unk tokens", "sub-words/word",
         "tokens/word", "hashtags", "mentions", "URLs"],
        [[r["model"], r["preprocess"], f"{r['split_word_share']:.1%}", f"{r['split_type_share']:.1%}",
          f"{r['unk_token_share']:.2%}", f"{r['subwords_per_word']:.3f}", f"{r['tokens_per_word']:.3f}",
          *(f"{r['by_kind'][k]['split_share']:.0%} ({r['by_kind'][k]['words']})"
            for k in ("hashtag", "mention", "url"))] for r in rows])
    lines += ["", "Most frequent split words:", ""]
    for r in rows:
        words = ", ".join(f"`{w['word']}` → {' '.join(w['tokens'])} ({w['count']})" for w in r["top_split"])
        lines.append(f"- **{r['model']} / {r['preprocess']}**: {words or '(none)'}")
    return lines


def plot_study(best: list[dict[str, Any]], path: str | Path) -> None:
    """Grouped bars: best-lr accuracy and F1 (mean ± std) per model × preprocessing/imbalance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(c["model"] for c in best))
    series = list(dict.fromkeys((c["preprocess"], c["imbalance"]) for c in best))
    index = {(c["model"], c["preprocess"], c["imbalance"]): c for c in best}
    width = 0.8 / max(len(series), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.2 + len(models) * len(series) * 0.45), 7),
                             sharex=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        lows = []
        for k, (variant, imbalance) in enumerate(series):
            cells = [index.get((m, variant, imbalance)) for m in models]
            means = [c[f"{metric}_mean"] if c else np.nan for c in cells]
            stds = [c[f"{metric}_std"] if c else 0.0 for c in cells]
            lows += [m - s for m, s in zip(means, stds, strict=True) if not np.isnan(m)]
            x = np.arange(len(models)) + (k - (len(series) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=3, label=f"{variant} / {imbalance}")
        ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.0)
        ax.set_ylabel(f"{metric} (best lr)")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(models)), models)
    fig.suptitle("Validation accuracy and F1 at the best lr, mean ± std over seeds", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(series)), fontsize=8,
               title="preprocess / imbalance", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * -(-len(series) // 3), 1, 1))
    save_png(fig, path)


def build_payload(cfg: StudyConfig, runs: list[dict[str, Any]],
                  coverage: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything ``study.json`` holds (also what :func:`run_study` returns)."""
    status = [r["status"] for r in runs]
    counts = {s: status.count(s) for s in ("ran", "skipped", "pending")}
    counts.update(total=len(runs), done=counts["ran"] + counts["skipped"])
    cells = aggregate(runs)
    return {"study": "disaster-tweets comparison (Ojo et al. 2023)", "config": to_dict(cfg),
            "budget": _budget(cfg), "complete": counts["pending"] == 0, "counts": counts,
            "best": select_best(cells), "cells": cells, "runs": runs, "coverage": coverage}


def write_reports(out: Path, payload: dict[str, Any], plot: bool = True) -> None:
    """``study.json``, ``study.md`` and (with ``plot``) ``study_accuracy.png`` into ``out``."""
    write_json(out / "study.json", payload)
    with atomic_file(out / "study.md") as handle:
        handle.write(render_markdown(payload))
    if plot and payload["best"]:
        plot_study(payload["best"], out / "study_accuracy.png")


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) the grid, aggregate over seeds, write the reports; returns ``study.json``."""
    require(bool(cfg.out), "a study needs an output directory (out: or --out)")
    require(bool(cfg.data.train), "a study needs data.train")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    with locked_dir(cfg.out):  # a second run of the study fails now, not mid-grid
        return _run_locked(cfg, Path(cfg.out))


def _run_locked(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    """:func:`run_study` with ``out`` locked."""
    start = time.perf_counter()
    plan = plan_runs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    coverage = study_coverage(cfg) if cfg.coverage else []
    runs = _run_all(cfg, plan, lambda done: write_reports(out, build_payload(cfg, done, coverage), False))
    payload = build_payload(cfg, runs, coverage)
    payload["seconds"] = round(time.perf_counter() - start, 1)
    write_reports(out, payload)
    return payload
