"""One CLI (#21): shell completion, recipe defaults in --help, clean help text, --out directories,
the README's recipe claim, and every writer saying where it wrote."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from conftest import REPO_ROOT, run_cli

from distilprune import cli, recipe_defaults
from distilprune.errors import UserError


def _root() -> Any:
    return typer.main.get_command(cli.app)


def _walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """The root, every group and every command, with its argv path."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _walk(sub, (*path, name))
    return found


# ----------------------------------------------------------------------------- shell completion
def test_show_completion_prints_the_bash_script(monkeypatch, capfd):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # take the shell as a value
    code, out, err = run_cli(monkeypatch, capfd, "--show-completion", "bash")
    assert code == 0, err
    assert "_DISTILPRUNE_COMPLETE=complete_bash" in out
    assert "complete -o default -F _distilprune_completion distilprune" in out


def test_install_completion_writes_the_script_and_says_where(monkeypatch, capfd, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    code, out, err = run_cli(monkeypatch, capfd, "--install-completion", "bash")
    script = tmp_path / ".bash_completions" / "distilprune.sh"
    assert code == 0 and str(script) in out, err
    assert "_DISTILPRUNE_COMPLETE=complete_bash" in script.read_text()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()


@pytest.mark.parametrize(("words", "expected", "absent"), [
    ("distilprune fi", {"finetune", "fit-mlm-head"}, {"export", "--version"}),
    ("distilprune models ", {"list", "install"}, {"finetune"}),
    ("distilprune benchmark --max", {"--max-length"}, {"--seq-len", "--threads"}),
    ("distilprune fit-mlm-head --", {"--model", "--max-steps", "--recipe"}, {"--teacher", "--steps"}),
])
def test_bash_completes_commands_and_options(monkeypatch, capfd, words, expected, absent):
    monkeypatch.setenv("_DISTILPRUNE_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split(" ")) - 1))
    code, out, err = run_cli(monkeypatch, capfd)
    completions = set(out.split())
    assert code == 0, err
    assert expected <= completions and not absent & completions, completions


# ----------------------------------------------------------------------------- recipe defaults
RECIPE_COMMANDS = {  # command: (its config classes, its visible options no recipe key sets)
    "finetune": ("finetune:FinetuneConfig", {"recipe", "set_"}),
    "fit-mlm-head": ("distill:MLMHeadConfig", {"recipe", "set_", "out"}),  # --out is required
    "distill-mlm": ("distill:GeneralDistillConfig", {"recipe", "set_"}),
}


def _option_help(command: str) -> dict[str, str]:
    """Each visible option's help text, with the recipe notes ``--help`` adds."""
    cmd = _root().commands[command]
    cmd.show_defaults()
    return {p.name: p.help or "" for p in cmd.params if not getattr(p, "hidden", False)}


@pytest.mark.parametrize("command", list(RECIPE_COMMANDS))
def test_every_recipe_setting_shows_its_key(command):
    _config, without = RECIPE_COMMANDS[command]
    helps = _option_help(command)
    noted = {name for name, text in helps.items() if "recipe's " in text or "recipe key: " in text}
    assert set(helps) - noted == without


@pytest.mark.parametrize(("command", "option", "key"), [
    ("finetune", "lr", "train.lr"),
    ("finetune", "max_length", "data.max_length"),
    ("finetune", "imbalance", "data.imbalance"),
    ("finetune", "prune_end", "prune.end_fraction"),
    ("finetune", "prune_every", "prune.frequency"),
    ("fit-mlm-head", "lr", "train.lr"),  # the job's own default (1e-3), not TrainConfig's
    ("fit-mlm-head", "max_length", "corpus.max_length"),
    ("fit-mlm-head", "epochs", "train.epochs"),  # one "Training" group for the three commands
    ("distill-mlm", "lr", "train.lr"),
    ("distill-mlm", "alpha_ce", "loss.alpha_ce"),
    ("distill-mlm", "cos_layers", "loss.cos_layers"),
    ("distill-mlm", "batch_size", "train.batch_size"),
])
def test_recipe_defaults_are_the_configs_defaults(command, option, key):
    import importlib

    module, _, name = RECIPE_COMMANDS[command][0].partition(":")
    config = getattr(importlib.import_module(f"distilprune.jobs.{module}"), name)()
    value = recipe_defaults.config_defaults(config)[key]
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    assert f"(default: recipe's {key}, else {shown})" in _option_help(command)[option]


def test_config_defaults_reads_instances_and_unset_sections():
    from distilprune.jobs.distill import MLMHeadConfig
    from distilprune.jobs.finetune import FinetuneConfig

    assert recipe_defaults.config_defaults(MLMHeadConfig())["train.lr"] == pytest.approx(1e-3)
    finetune = recipe_defaults.config_defaults(FinetuneConfig())
    assert finetune["train.lr"] == pytest.approx(5e-5) and finetune["prune.method"] == "unstructured"
    assert finetune["prune"] is None and "train" not in finetune  # an unset section is a key, a set one not


def test_help_defaults_are_current():
    assert recipe_defaults.generate() == recipe_defaults.DEFAULTS, (
        "a config's defaults changed: run python -m distilprune.recipe_defaults")


def test_help_defaults_are_regenerated(tmp_path):
    import runpy
    import shutil

    copy = shutil.copy(recipe_defaults.__file__, tmp_path / "copy.py")
    Path(copy).write_text(Path(copy).read_text().replace("'train.lr': ", "'train.lr': 1 + "))
    assert runpy.run_path(copy)["DEFAULTS"] != recipe_defaults.generate()  # stale
    recipe_defaults.main(Path(copy))
    assert runpy.run_path(copy)["DEFAULTS"] == recipe_defaults.generate()


def test_help_does_not_import_torch():
    import os
    import subprocess
    import sys

    code = ("import sys; from distilprune import cli; "
            "cli.app(['finetune', '--help'], standalone_mode=False); sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0 and "recipe's train.lr" in result.stdout, result.stderr


def test_switches_and_flags_show_one_default():
    helps = _option_help("finetune")
    assert helps["prune"].endswith("(recipe key: prune)") and helps["qat"].endswith("(recipe key: qat)")
    assert helps["resume"].endswith("(default: recipe's train.resume, else false)")


def test_bool_flag_help_has_no_second_default(monkeypatch, capfd):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run_cli(monkeypatch, capfd, "fit-mlm-head", "--help")
    assert code == 0, err
    assert "(default: recipe's overwrite, else false)" in out and "[default: no-overwrite]" not in out


def test_task_distillation_options_show_their_recipe_keys():
    helps = _option_help("finetune")
    assert helps["alpha_soft"].endswith("(default: recipe's loss.alpha_soft, else 0.5)")
    assert helps["temperature"].endswith("(default: recipe's loss.temperature, else 2)")
    assert helps["teacher"] == "task distillation: fine-tuned teacher directory (recipe key: teacher)"


def test_help_shows_recipe_defaults(monkeypatch, capfd):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run_cli(monkeypatch, capfd, "distill-mlm", "--help")
    assert code == 0, err
    assert "(default: recipe's loss.alpha_ce, else 5)" in out
    assert "its distill_mlm: section, or the whole file" in out


# ----------------------------------------------------------------------------- help text
REST = re.compile(r"``|:[a-z]+:`")


COMMANDS = dict(_walk(_root()))


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "root")
def test_no_rest_markup_in_any_help_text(path):
    command = COMMANDS[path]
    if hasattr(command, "show_defaults"):
        command.show_defaults()
    texts = [command.help, command.short_help, command.epilog]
    texts += [getattr(p, "help", None) for p in command.params]  # hidden options too
    assert not [t for t in texts if t and REST.search(t)]


@pytest.mark.parametrize("path", [("--help",), ("models", "--help")], ids=["root", "models"])
def test_group_help_renders_without_rest(monkeypatch, capfd, path):
    code, out, err = run_cli(monkeypatch, capfd, *path)
    assert code == 0 and "Usage" in out and "``" not in out, err
    if path == ("--help",):
        assert "--install-completion" in out and "--show-completion" in out and "--version" in out


# ----------------------------------------------------------------------------- README: --recipe
def _named(text: str) -> set[str]:
    return set(re.findall(r"`([a-z-]+)`", text))


def test_readme_says_which_commands_take_a_recipe():
    text = " ".join((REPO_ROOT / "README.md").read_text().split())
    as_option = re.search(r"`--recipe file\.yaml` is taken by (.+?) \(", text)
    as_argument = re.search(r"((?:`[a-z-]+`(?:, | and )?)+) take a recipe as their argument", text)
    assert as_option and as_argument, "the README's recipe sentence moved"
    kinds = {name: {p.param_type_name for p in cmd.params if p.name == "recipe"}
             for name, cmd in _root().commands.items()}
    assert _named(as_option[1]) == {name for name, kind in kinds.items() if kind == {"option"}}
    assert _named(as_argument[1]) == {name for name, kind in kinds.items() if kind == {"argument"}}
    with_set = {name for name, cmd in _root().commands.items()
                 if any("--set" in getattr(p, "opts", []) for p in cmd.params)}
    assert with_set == {name for name, kind in kinds.items() if kind}, "every recipe command takes --set"


# ----------------------------------------------------------------------------- benchmark --out
class Captured(UserError):
    """Raised by a stubbed job: the CLI parsed its arguments."""


def _capture(calls: list) -> Any:
    def job(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise Captured("captured")

    return job


@pytest.mark.parametrize(("out", "prefix", "warned"), [
    ("speed", "speed/benchmark", False),
    ("speed.json", "speed", True),  # the old file form
])
def test_benchmark_out_is_a_directory(monkeypatch, capfd, tmp_path, model, out, prefix, warned):
    calls: list = []
    monkeypatch.setattr("distilprune.benchmark.run_benchmark", _capture(calls))
    code, _out, err = run_cli(monkeypatch, capfd, "benchmark", model, "--out", tmp_path / out)
    assert code == 2 and "captured" in err, err
    assert Path(calls[0][3]) == tmp_path / prefix
    assert ("--out is a directory" in err) == warned


def test_benchmark_out_that_is_a_file_is_refused(monkeypatch, capfd, tmp_path, model):
    (tmp_path / "speed").write_text("x")
    code, _out, err = run_cli(monkeypatch, capfd, "benchmark", model, "--out", tmp_path / "speed")
    assert code == 2 and err.strip().endswith("into a directory"), err


# ----------------------------------------------------------------------------- where it wrote
def _fake_benchmark(models, texts, labels, prefix, *args) -> dict:
    files = {ext: prefix.with_name(f"{prefix.name}.{ext}") for ext in ("json", "md", "png")}
    files["md"].parent.mkdir(parents=True, exist_ok=True)
    files["md"].write_text("| model |\n")
    return {"files": {k: str(v) for k, v in files.items()}}


def _fake_static(model, out, texts, **kwargs) -> dict:
    out.mkdir(exist_ok=True)
    (out / "model.onnx").write_bytes(b"onnx")
    return {"n_texts": 1, "max_abs_diff": 0.0, "agreement": 1.0}


WRITERS = {  # command: (stubbed job, what it returns, extra arguments); "o" is the output
    "finetune": ("distilprune.jobs.finetune.finetune", {"data": {"n_val": 3}, "metrics": {"accuracy": 0.5}},
                 ("--data", "{csv}")),
    "student": ("distilprune.jobs.distill.make_student",
                {"student_layers": 1, "teacher_layers": 2, "parameters": 1, "parameter_ratio": 0.5}, ()),
    "fit-mlm-head": ("distilprune.jobs.distill.fit_mlm_head",
                     {"masked_accuracy_before": 0.1, "masked_accuracy": 0.2}, ()),
    "distill-mlm": ("distilprune.jobs.distill.general_distill",
                    {"parameters": 1, "sparsity": 0.0, "masked_accuracy": None,
                     "teacher_masked_accuracy": None}, ()),
    "export": ("distilprune.export.storage.save_compact",
               {"compact_bytes": 1, "dense_bytes": 2, "ratio": 2.0}, ("--format", "compact")),
    "quantize": ("distilprune.export.onnx.static_quantize_export", _fake_static, ("--data", "{csv}")),
    "shrink": ("distilprune.jobs.shrink.shrink_dir", SimpleNamespace(params_before=2, params_after=1), ()),
    "evaluate": ("distilprune.jobs.inference.evaluate_model", None, ("--data", "{csv}")),
    "predict": ("distilprune.jobs.inference.predict_file",
                lambda model, data, out, *a, **k: (3, Path(out) / "predictions.csv"), ("--data", "{csv}")),
    "benchmark": ("distilprune.benchmark.run_benchmark", _fake_benchmark, ()),
    "sparsity": (None, None, ()),  # real: the tiny model's report
}
NOT_STUBBED = {"run", "study", "demo"}  # pipelines: their stage table's title names the output


def test_every_writer_is_checked():
    writers = {name for name, cmd in _root().commands.items() if any(p.name == "out" for p in cmd.params)}
    assert writers == set(WRITERS) | NOT_STUBBED


@pytest.mark.parametrize("command", list(WRITERS))
def test_every_writer_says_where_it_wrote(monkeypatch, capfd, tmp_path, model, tiny_csv, command):
    target, result, extra = WRITERS[command]
    out = tmp_path / "o"
    if target:
        monkeypatch.setattr(target, result if callable(result) else (
            lambda *a, **k: result if result is not None else {"out": str(out), "accuracy": 0.5}))
    source = model
    if command == "quantize":
        source = tmp_path / "onnx"
        source.mkdir()
        (source / "model.onnx").write_bytes(b"onnx")
    flag = "--teacher" if command == "distill-mlm" else "--model"
    head = [command, source] if command in ("benchmark", "sparsity") else [command, flag, source]
    args = [*head, "--out", out, *(str(tiny_csv) if a == "{csv}" else a for a in extra)]
    code, stdout, err = run_cli(monkeypatch, capfd, *args)
    assert code == 0, err
    assert str(out) in "".join(stdout.split()), stdout
