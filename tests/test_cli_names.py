"""One CLI (#21): one name per idea, clean --help, the old spellings still parse (deprecated)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from conftest import run_cli

from distilprune import cli
from distilprune.errors import UserError


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the CLI as its argv path, e.g. ``("models", "list")``."""
    paths = []
    for name, command in group.commands.items():
        sub = getattr(command, "commands", None)
        paths += _command_paths(command, (*prefix, name)) if sub else [(*prefix, name)]
    return paths


COMMANDS = _command_paths(typer.main.get_command(cli.app))


def test_every_command_is_covered():
    assert {"finetune", "fit-mlm-head", "benchmark", "predict"} <= {p[-1] for p in COMMANDS}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_no_rest_markup(monkeypatch, capfd, path):
    code, out, err = run_cli(monkeypatch, capfd, *path, "--help")
    assert code == 0, err
    assert "Usage" in out
    assert "``" not in out
    for old in ("--steps ", "--seq-len", "--teacher"):
        assert old not in out or path[-1] in ("finetune", "distill-mlm"), old


@pytest.mark.parametrize(("command", "options"), [
    ("export", ("[onnx|compact|sparse|deepsparse]",)),
    ("predict", ("[auto|torch|sparse]",)),
    ("finetune", ("[unstructured|block|structured]", "[layer|global]", "[none|class_weights|oversample]")),
    ("distill-mlm", ("[last|all]",)),
])
def test_choices_listed_in_help(monkeypatch, capfd, command, options):
    monkeypatch.setenv("COLUMNS", "200")
    _code, out, _err = run_cli(monkeypatch, capfd, command, "--help")
    for choices in options:
        assert choices in out


class Captured(UserError):
    """Raised by a stubbed job: the CLI parsed its arguments."""


def _capture(calls: list) -> Any:
    def job(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))
        raise Captured("captured")

    return job


def _mlm(model, tiny_csv, tmp_path, *names: str) -> list:
    model_flag, steps_flag = names
    return [model_flag, model, "--out", tmp_path / "o", "--corpus", tiny_csv, steps_flag, "3"]


CASES = {
    "fit-mlm-head": ("distilprune.jobs.distill.fit_mlm_head", ("--model", "--max-steps"),
                     ("--teacher", "--steps")),
    "distill-mlm": ("distilprune.jobs.distill.general_distill", ("--teacher", "--max-steps"),
                    ("--teacher", "--steps")),
}


@pytest.mark.parametrize("command", list(CASES))
@pytest.mark.parametrize("spelling", ["new", "old"])
def test_mlm_commands_accept_both_spellings(monkeypatch, capfd, tmp_path, model, tiny_csv, command, spelling):
    target, new, old = CASES[command]
    calls: list = []
    monkeypatch.setattr(target, _capture(calls))
    args = _mlm(model, tiny_csv, tmp_path, *(new if spelling == "new" else old))
    code, _out, err = run_cli(monkeypatch, capfd, command, *args)
    assert code == 2 and "captured" in err, err
    cfg = calls[0][0][0]
    assert cfg.train.max_steps == 3 and cfg.teacher == str(model)
    deprecated = [line for line in err.splitlines() if "deprecated" in line]
    assert len(deprecated) == (0 if spelling == "new" else len(set(old) - set(new)))


@pytest.mark.parametrize("flag", ["--model", "--teacher"])
def test_student_model_and_old_teacher(monkeypatch, capfd, tmp_path, model, flag):
    calls: list = []
    monkeypatch.setattr("distilprune.jobs.distill.make_student", _capture(calls))
    code, _out, err = run_cli(monkeypatch, capfd, "student", flag, model, "--out", tmp_path / "s")
    assert code == 2 and "captured" in err, err
    assert calls[0][0][0].teacher == str(model)
    assert ("--teacher is deprecated, use --model" in err) == (flag == "--teacher")


def test_student_without_model_is_one_line(monkeypatch, capfd, tmp_path):
    code, _out, err = run_cli(monkeypatch, capfd, "student", "--out", tmp_path / "s")
    assert code == 2 and err.strip() == "error: student needs --model (the teacher)"


@pytest.mark.parametrize("flag", ["--max-length", "--seq-len"])
def test_benchmark_max_length_and_old_seq_len(monkeypatch, capfd, tmp_path, model, flag):
    calls: list = []
    monkeypatch.setattr("distilprune.benchmark.run_benchmark", _capture(calls))
    code, _out, err = run_cli(monkeypatch, capfd, "benchmark", model, "--out", tmp_path / "b", flag, "24")
    assert code == 2 and "captured" in err, err
    assert calls[0][0][6] == 24
    assert ("--seq-len is deprecated, use --max-length" in err) == (flag == "--seq-len")


@pytest.mark.parametrize("where", ["recipe", "flags"])
def test_finetune_takes_its_teacher_and_loss_from_the_recipe_or_flags(monkeypatch, capfd, tmp_path, model,
                                                                     tiny_csv, where):
    """A finetune recipe section holds teacher: and loss: as a finetune stage of a graph does;
    the flags win over it."""
    calls: list = []
    monkeypatch.setattr("distilprune.jobs.distill.distill_task", _capture(calls))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"finetune:\n  teacher: {model}\n  loss: {{temperature: 3.0, alpha_soft: 0.7}}\n")
    args = ["--model", model, "--data", tiny_csv, "--out", tmp_path / "o", "--recipe", recipe]
    if where == "flags":
        args += ["--teacher", tmp_path / "other", "--temperature", "4"]
    code, _out, err = run_cli(monkeypatch, capfd, "finetune", *args)
    assert code == 2 and "captured" in err, err
    task = calls[0][0][0]
    expected = (str(model), 3.0) if where == "recipe" else (str(tmp_path / "other"), 4.0)
    assert (task.teacher, task.loss.temperature, task.loss.alpha_soft) == (*expected, 0.7)
    assert task.finetune.model == str(model)


@pytest.mark.parametrize(("command", "target"), [("finetune", "distilprune.jobs.distill.task_finetune"),
                                                 ("distill-mlm", "distilprune.jobs.distill.general_distill")])
def test_prune_flags_override_the_recipes_prune_section(monkeypatch, capfd, tmp_path, model, tiny_csv,
                                                        command, target):
    """Every flag lands on the recipe key its --help names: --final-sparsity without --prune changes
    the recipe's prune: section (it was dropped: the model was pruned to the recipe's 50 %)."""
    calls: list = []
    monkeypatch.setattr(target, _capture(calls))
    section = command.replace("-", "_")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}:\n  prune: {{method: block, final_sparsity: 0.5}}\n"
                      + ("  lock_sparsity: true\n" if command == "finetune" else ""))
    source = ["--model", model, "--data", tiny_csv] if command == "finetune" else ["--teacher", model]
    args = [*source, "--out", tmp_path / "o", "--recipe", recipe, "--final-sparsity", "0.9",
            "--prune-end", "0.6", "--max-steps", "3"]
    if command == "finetune":
        args.append("--no-lock-sparsity")
    code, _out, err = run_cli(monkeypatch, capfd, command, *args)
    assert code == 2 and "captured" in err, err
    cfg = calls[0][0][0]
    prune = (cfg.prune.method, cfg.prune.final_sparsity, cfg.prune.end_fraction, cfg.train.max_steps)
    assert prune == ("block", 0.9, 0.6, 3)
    assert command != "finetune" or cfg.lock_sparsity is False
