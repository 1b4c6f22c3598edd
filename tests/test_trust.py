"""Issue #19, trust: inputs that used to give wrong results with exit code 0, interrupted runs that
reported success, outputs written where they cannot go. Each case fails with one line (exit 2,
130 or 143) and leaves nothing behind, or gives the right answer.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXTS, assert_user_error, labelled_csv, paused_run, run_cli, snapshot, write

from distilprune.data.loading import load_table
from distilprune.errors import UserError

FAST = ["--max-steps", "1", "--batch-size", "4", "--max-length", "16"]


# ----------------------------------------------------------------------------- 1. no tokenizer
def _no_serve(*_args, **_kwargs):
    raise AssertionError("must fail before serving or training")


def test_packaged_alias_keeps_its_tokenizer():
    from distilprune.models.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer("minilm-l6")
    except UserError as exc:
        pytest.skip(f"minilm-l6 not installed: {exc}")
    assert tokenizer.unk_token_id not in tokenizer("forest fire")["input_ids"]


# ----------------------------------------------------------------------------- 2. label mapping
def test_labels_map_through_the_models_label_names(tmp_path):
    only_yes = labelled_csv(tmp_path / "yes.csv", ["yes", "yes"])
    assert load_table(only_yes).labels == [0, 0]  # re-encoded per file: the old bug
    assert load_table(only_yes, label_names=["no", "yes"]).labels == [1, 1]
    assert load_table(labelled_csv(tmp_path / "i.csv", ["1", "0"]), label_names=["0", "1"]).labels == [1, 0]


def test_evaluate_file_with_one_class_keeps_its_id(monkeypatch, capfd, work, yes_no_model):
    data = labelled_csv(work / "yes.csv", ["yes"] * 6)
    code, _out, err = run_cli(monkeypatch, capfd, "evaluate", "--model", yes_no_model, "--data", data,
                              "--out", work / "ev")
    assert code == 0, err
    metrics = json.loads((work / "ev" / "metrics.json").read_text())
    assert metrics["confusion_matrix"][0] == [0, 0]  # no true "no" row
    assert sum(metrics["confusion_matrix"][1]) == 6


def test_validation_file_maps_through_training_labels(monkeypatch, capfd, work, model):
    train = labelled_csv(work / "train.csv", ["no", "yes"] * 6)
    val = labelled_csv(work / "val.csv", ["yes"] * 4)
    args = ["finetune", "--model", model, "--data", train, "--validation", val, "--out", work / "ft", *FAST]
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 0, err
    split = json.loads((work / "ft" / "split.json").read_text())
    assert split["class_balance_val"] == {"no": 0.0, "yes": 1.0}
    bad = labelled_csv(work / "bad.csv", ["yes", "nope"])
    args[args.index(val)] = bad
    args[args.index(work / "ft")] = work / "ft2"
    assert_user_error(monkeypatch, capfd, work, args, "'nope'")


# ----------------------------------------------------------------------------- 3. predict label names
def test_predict_data_writes_label_names_like_predict_text(monkeypatch, capfd, work, yes_no_model, model):
    data = labelled_csv(work / "in.csv", ["yes"] * 3)
    for name, path in (("named", yes_no_model), ("plain", model)):
        code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", path, "--data", data,
                                  "--out", work / f"{name}.csv")
        assert code == 0, err
        rows = list(csv.reader((work / f"{name}.csv").open()))
        code, out, err = run_cli(monkeypatch, capfd, "predict", "--model", path,
                                 *[a for i in range(3) for a in ("--text", f"{SAMPLE_TEXTS[i]} {i}")])
        assert code == 0, err
        assert rows[0] == ["id", "target"]
        assert [r[1] for r in rows[1:]] == [json.loads(line)["label"] for line in out.splitlines()]
        assert {r[1] for r in rows[1:]} <= ({"no", "yes"} if name == "named" else {"0", "1"})


# ----------------------------------------------------------------------------- 4. empty texts
def test_null_label_is_refused(tmp_path):
    """A JSONL ``null`` label is not the label ``nan`` (null texts: see test_errors.py)."""
    nulls = write(tmp_path / "nl.jsonl", json.dumps({"text": "a b", "label": None}) + "\n")
    with pytest.raises(UserError, match="empty label"):
        load_table(nulls)


# ----------------------------------------------------------------------------- 5. signals
@pytest.mark.parametrize("signum, code, message", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_signal_while_saving_exits_with_one_line(monkeypatch, capfd, work, model, signum, code, message):
    """The signal arrives while the output is half-written: nothing is left, the code says so."""
    import distilprune.jobs.finetune as job

    def save_then_die(out, *args):
        (out / "half-written").write_text("x")
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal handler did not raise")

    monkeypatch.setattr(job, "save_model_dir", save_then_die)
    before, handler = snapshot(work), signal.getsignal(signum)
    got, _out, err = run_cli(monkeypatch, capfd, "finetune", "--model", model, "--data", work / "good.csv",
                             "--out", work / "ft", *FAST)
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no progress bars
    assert got == code, err
    assert lines == [message], err
    assert snapshot(work) == before
    assert signal.getsignal(signum) == handler  # the CLI's handler is gone after the run


class _SignalInFinalizer:
    """Sends SIGTERM from its ``__del__``: the handler's exception lands where Python drops it."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_signal_landing_in_a_finalizer_is_not_lost(monkeypatch, capfd, work, model):
    """A SIGTERM arriving while garbage collection runs a ``__del__`` (seen in benchmarks/faults.py:
    the run went on and exited 0) still stops the run with 143."""
    import time

    import distilprune.jobs.finetune as finetune

    def train_after_a_finalizer(*_args, **_kwargs):
        _SignalInFinalizer()  # collected at once
        time.sleep(5)  # the signal, sent again, lands here
        raise AssertionError("the signal was lost")

    monkeypatch.setattr(finetune, "train", train_after_a_finalizer)
    before = snapshot(work)
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["terminated (SIGTERM)"]
    assert snapshot(work) == before


def test_signal_during_an_import_waits_for_it(monkeypatch, capfd, tmp_path, work, model):
    """Raised inside an import, the exception would break the module (a C extension's initialisation
    turns it into an ImportError, then the interpreter aborts at exit: seen in benchmarks/faults.py):
    the signal lands once the import is done, and still stops the run with 143."""
    import sys
    import time

    import distilprune.jobs.finetune as finetune

    modules = tmp_path / "modules"
    modules.mkdir()
    write(modules / "signal_on_import.py", "import os\nos.kill(os.getpid(), 15)\nDONE = 1\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "signal_on_import", raising=False)

    def train_after_an_import(*_args, **_kwargs):
        import signal_on_import  # noqa: F401
        time.sleep(5)  # the signal, sent again, lands here
        raise AssertionError("the signal was lost")

    monkeypatch.setattr(finetune, "train", train_after_an_import)
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["terminated (SIGTERM)"]
    assert sys.modules["signal_on_import"].DONE == 1


def test_interrupt_wrapped_by_a_library_is_still_an_interrupt(monkeypatch, capfd, work, model):
    import distilprune.jobs.finetune as finetune
    from distilprune.errors import Interrupted

    def wrapped(*_args, **_kwargs):
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(finetune, "train", wrapped)
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["terminated (SIGTERM)"]


def test_keyboard_interrupt_inside_a_command_is_not_success(monkeypatch, capfd, work, model):
    """typer turns a bare KeyboardInterrupt into a returned 130 that used to become exit 0."""
    import distilprune.jobs.inference as inference

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "load_predictor", interrupt)
    code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", model, "--text", "fire")
    assert code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted"]


# ----------------------------------------------------------------------------- 6. commands used below
RUNS = {
    "finetune": lambda m, w, o: ["finetune", "--model", m, "--data", w / "good.csv", "--out", o, *FAST],
    "student": lambda m, w, o: ["student", "--model", m, "--out", o, "--layers", "1"],
    "fit-mlm-head": lambda m, w, o: ["fit-mlm-head", "--model", m, "--out", o, "--corpus", w / "good.csv",
                                     "--max-steps", "1"],
    "distill-mlm": lambda m, w, o: ["distill-mlm", "--teacher", m, "--out", o, "--corpus", w / "good.csv",
                                    "--max-steps", "1"],
    "export": lambda m, w, o: ["export", "--model", m, "--out", o],
    "predict": lambda m, w, o: ["predict", "--model", m, "--data", w / "good.csv", "--out", o],
}


# ----------------------------------------------------------------------------- 7. leftovers of killed saves
def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_run_sweeps_what_killed_saves_left(monkeypatch, capfd, work, model):
    dead = _dead_pid()
    stale = [work / f".ft.tmp-{dead}-abc", work / f".ft.probe-{dead}-x"]
    for path in stale:
        path.mkdir()
        (path / "half").write_text("x")
    write(work / f".ft.tmp-{dead}-file", "x")
    write(work / ".ft.lock", str(dead))  # nobody holds it: its run was killed
    alive = work / f".ft.tmp-{os.getpid()}-live"  # a live writer's entry stays
    alive.mkdir()
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
    assert code == 0, err
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".ft")) == [alive.name]


def test_killed_swap_of_an_old_output_brings_it_back(tmp_path):
    from distilprune.checkpoint import load_checkpoint

    dead = _dead_pid()
    backup = tmp_path / f".ck.old-{dead}"
    backup.mkdir()
    assert load_checkpoint(tmp_path / "ck") is None
    assert (tmp_path / "ck").is_dir() and not backup.exists()


def test_failed_final_rename_leaves_nothing(monkeypatch, capfd, work, model):
    import distilprune.io as io

    real = os.replace

    def refuse(src, dst):
        if Path(dst).name == "ft":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", refuse)
    before = snapshot(work)
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no progress bars
    assert code == 2, err
    assert lines == [f"error: cannot write {work / 'ft'}: No space left on device"], err
    assert snapshot(work) == before


def test_overwriting_a_file_leaves_no_backup(monkeypatch, capfd, work, model):
    target = write(work / "report", "old")
    code, _out, err = run_cli(monkeypatch, capfd, "evaluate", "--model", model, "--data", work / "good.csv",
                              "--out", target)
    assert code == 0, err
    assert (target / "metrics.json").is_file()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- 8. concurrent runs
def test_second_run_on_the_same_out_fails_at_start(monkeypatch, capfd, work, model):
    import fcntl

    import distilprune.jobs.finetune as finetune

    monkeypatch.setattr(finetune, "train", _no_serve)
    with (work / ".ft.lock").open("w") as held:  # another run's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        line = assert_user_error(monkeypatch, capfd, work, RUNS["finetune"](model, work, work / "ft"),
                                 "is writing")
    assert "PID 4242" in line


def hidden(root: Path) -> list[str]:
    """Every dot-entry (lock, temporary output, backup) under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def test_two_runs_on_a_new_nested_out(monkeypatch, capfd, work, model):
    """``a/new/dir`` does not exist yet: the first run locks it (creating its parents) for its whole
    run, the second fails at start with one line and leaves nothing; the first then succeeds."""
    out = work / "a" / "new" / "dir"
    args = RUNS["finetune"](model, work, out)
    with paused_run("distilprune.jobs.finetune.train", *args) as first:
        assert (work / "a" / "new" / ".dir.lock").is_file()
        line = assert_user_error(monkeypatch, capfd, work, args, "is writing")
        assert f"PID {first.proc.pid}" in line
        code, err = first.resume()
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    assert hidden(work) == []


def pipeline_recipe(work: Path, model: Path) -> Path:
    """A recipe whose teacher stage is a 1-step fine-tune (the other stages are not run)."""
    data = str(work / "good.csv")
    recipe = {"out": str(work / "runs" / "p"), "threads": 1,
              "data": {"train": data, "max_length": 16, "val_fraction": 0.25},
              "teacher": {"model": str(model), "train": {"max_steps": 1, "batch_size": 4}},
              "distill": {"corpus": {"files": [data]}}}
    return write(work / "p.yaml", json.dumps(recipe))


def graph_recipe(work: Path, model: Path) -> Path:
    """A stage-graph recipe of one 1-step fine-tune."""
    data = {"train": str(work / "good.csv"), "max_length": 16, "val_fraction": 0.25}
    recipe = {"out": str(work / "runs" / "g"), "threads": 1, "stages": {"dense": {
        "kind": "finetune", "model": str(model), "data": data, "train": {"max_steps": 1, "batch_size": 4}}}}
    return write(work / "g.yaml", json.dumps(recipe))


def study_recipe(work: Path, model: Path) -> Path:
    """A one-cell study of 1 step."""
    recipe = {"out": str(work / "runs" / "s"), "data": {"train": str(work / "good.csv"), "max_length": 16},
              "models": [str(model)], "seeds": [1], "coverage": False,
              "train": {"max_steps": 1, "batch_size": 4, "patience": None}}
    return write(work / "s.yaml", json.dumps(recipe))


RUN_DIR_CASES = {  # the second of two runs of one recipe fails at start, before its first stage / cell
    "pipeline": (pipeline_recipe, ["run", "{recipe}", "--stages", "teacher"], "jobs.staging.run_stage"),
    "graph": (graph_recipe, ["run", "{recipe}"], "jobs.staging.run_stage"),
    "study": (study_recipe, ["study", "{recipe}"], "jobs.study.execute_run"),
}


@pytest.mark.parametrize("case", list(RUN_DIR_CASES))
def test_two_runs_of_one_recipe(monkeypatch, capfd, work, model, case):
    make, template, where = RUN_DIR_CASES[case]
    recipe = make(work, model)
    args = [str(recipe) if a == "{recipe}" else a for a in template]
    with paused_run(f"distilprune.{where}", *args) as first:
        assert (work / "runs" / recipe.stem / ".run.lock").is_file()
        line = assert_user_error(monkeypatch, capfd, work, args, "is writing")
        assert f"PID {first.proc.pid}" in line and f"runs/{recipe.stem} right now" in line
        code, err = first.resume()
    assert code == 0, err
    assert hidden(work) == []
    code, out, err = run_cli(monkeypatch, capfd, *args)  # the lock is gone: a rerun reuses the work
    assert code == 0, err
    assert ("up to date, skipped" in err) if case != "study" else ("1 reused" in out)


def test_failed_stage_leaves_no_empty_directories(monkeypatch, capfd, work, model):
    """A stage failing after it took its own output's lock: the run directory made for the run is
    removed with the locks (it held only lock files)."""
    import distilprune.jobs.finetune as finetune
    from distilprune.errors import UserError as Refused

    def refuse(*_args, **_kwargs):
        raise Refused("out of memory, say")

    monkeypatch.setattr(finetune, "train", refuse)
    args = ["run", pipeline_recipe(work, model), "--stages", "teacher", "--out", work / "new" / "p"]
    before = snapshot(work)
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 2 and "error: out of memory, say" in err, err
    assert snapshot(work) == before


def test_lock_is_gone_after_a_run(monkeypatch, capfd, work, model):
    code, _out, err = run_cli(monkeypatch, capfd, *RUNS["predict"](model, work, work / "p.csv"))
    assert code == 0, err
    assert not (work / ".p.csv.lock").exists()


# ----------------------------------------------------------------------------- 9. aliases
def test_alias_works_wherever_a_model_is_expected(monkeypatch, capfd, work, model):
    from distilprune.models import registry

    alias = registry.PackagedModel("tiny-test", (), "the tiny test model", lambda _m: model)
    monkeypatch.setitem(registry.ALIASES, "tiny-test", alias)
    code, out, err = run_cli(monkeypatch, capfd, "predict", "--model", "tiny-test", "--text", "fire")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["label"] in {"0", "1"}
    code, _out, err = run_cli(monkeypatch, capfd, "evaluate", "--model", "tiny-test", "--data",
                              work / "good.csv", "--out", work / "ev")
    assert code == 0, err
    code, _out, err = run_cli(monkeypatch, capfd, "export", "--model", "tiny-test", "--out", work / "onnx",
                              "--max-length", "16")
    assert code == 0, err
    assert (work / "onnx" / "model.onnx").is_file()


# ----------------------------------------------------------------------------- 10. permissions
@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_follow_the_umask(monkeypatch, capfd, work, model, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        code, _out, err = run_cli(monkeypatch, capfd, *RUNS["finetune"](model, work, work / "ft"))
        assert code == 0, err
        code, _out, err = run_cli(monkeypatch, capfd, *RUNS["predict"](model, work, work / "p.csv"))
        assert code == 0, err
    finally:
        os.umask(previous)
    assert (work / "ft").stat().st_mode & 0o777 == dir_mode
    assert (work / "ft" / "metrics.json").stat().st_mode & 0o777 == file_mode
    assert (work / "ft" / "model.safetensors").stat().st_mode & 0o777 == file_mode  # safetensors: 0600
    assert (work / "p.csv").stat().st_mode & 0o777 == file_mode


def test_signal_at_the_final_rename_leaves_nothing(monkeypatch, capfd, work, model):
    """The checkpoint goes just before the output's rename: a run stopped there restarts from scratch
    (same result); one stopped after it has a complete output and nothing left to resume."""
    import distilprune.io as io
    from distilprune.errors import Interrupted

    real = os.replace

    def die_at_rename(src, dst):
        if Path(dst).name == "ft":
            assert not (work / "ft.checkpoint").exists()
            raise Interrupted(signal.SIGTERM)
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", die_at_rename)
    before = snapshot(work)
    args = [*RUNS["finetune"](model, work, work / "ft"), "--checkpoint-every", "1"]
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 143, err
    assert snapshot(work) == before


# ----------------------------------------------------------------------------- 11. resuming another run
def test_checkpoint_of_other_settings_is_not_resumed(monkeypatch, capfd, work, model):
    """A checkpoint left by an interrupted run is resumed only by the same settings and data."""
    import distilprune.jobs.finetune as finetune

    args = [*RUNS["finetune"](model, work, work / "ft"), "--checkpoint-every", "1", "--max-steps", "2"]
    with monkeypatch.context() as patch:
        patch.setattr(finetune, "save_on_main_process", _interrupt)
        code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 130, err
    assert (work / "ft.checkpoint" / "trainer.json").is_file()
    for other in (["--lr", "0.5"], ["--data", labelled_csv(work / "other.csv", ["1", "0"] * 10)]):
        line = assert_user_error(monkeypatch, capfd, work, [*args, *other, "--resume"], "other settings")
        assert "ft.checkpoint" in line
    code, _out, err = run_cli(monkeypatch, capfd, *args, "--resume")
    assert code == 0, err
    assert (work / "ft" / "model.safetensors").is_file() and not (work / "ft.checkpoint").exists()


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt
