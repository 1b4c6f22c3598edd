"""Issue #19, trust: inputs that used to give wrong results with exit code 0, interrupted runs that
reported success, outputs written where they cannot go. Each case fails with one line (exit 2,
130 or 143) and leaves nothing behind, or gives the right answer.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXTS, assert_user_error, run_cli, snapshot

from distilprune.data.loading import load_table
from distilprune.errors import UserError

FAST = ["--max-steps", "1", "--batch-size", "4", "--max-length", "16"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def labelled_csv(path: Path, labels: list[str]) -> Path:
    rows = "".join(f'{i},"{SAMPLE_TEXTS[i % 8]} {i}",{label}\n' for i, label in enumerate(labels))
    return write(path, "id,text,target\n" + rows)


@pytest.fixture(scope="module")
def model(tiny_model_factory) -> Path:
    return tiny_model_factory("bert", 2)


@pytest.fixture(scope="module")
def no_tokenizer(tmp_path_factory, model) -> Path:
    """The tiny model's config and weights only: no tokenizer files."""
    out = tmp_path_factory.mktemp("no-tok") / "model"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, out / name)
    return out


@pytest.fixture(scope="module")
def onnx_no_tokenizer(tmp_path_factory, model) -> Path:
    """An ONNX export of the tiny model whose tokenizer files were removed."""
    from distilprune.export import export_onnx

    out = tmp_path_factory.mktemp("onnx-no-tok") / "onnx"
    export_onnx(model, out, max_length=16, parity_texts=SAMPLE_TEXTS[:2])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (out / name).unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def yes_no_model(tmp_path_factory, model) -> Path:
    """The tiny model as if fine-tuned on string labels ``no``/``yes``."""
    out = tmp_path_factory.mktemp("yes-no") / "model"
    shutil.copytree(model, out)
    write(out / "distilprune.json", json.dumps({"kind": "classifier", "label_names": ["no", "yes"]}))
    return out


@pytest.fixture
def work(tmp_path) -> Path:
    labelled_csv(tmp_path / "good.csv", [str(i % 2) for i in range(20)])
    return tmp_path


# ----------------------------------------------------------------------------- 1. no tokenizer
def _no_serve(*_args, **_kwargs):
    raise AssertionError("must fail before serving or training")


TOKENIZER_CASES = {
    "predict_text": lambda m, w: ["predict", "--model", m, "--text", "fire"],
    "predict_data": lambda m, w: ["predict", "--model", m, "--data", w / "good.csv", "--out", w / "p.csv"],
    "evaluate": lambda m, w: ["evaluate", "--model", m, "--data", w / "good.csv", "--out", w / "ev"],
    "finetune": lambda m, w: ["finetune", "--model", m, "--data", w / "good.csv", "--out", w / "ft", *FAST],
    "export": lambda m, w: ["export", "--model", m, "--out", w / "onnx"],
    "serve": lambda m, w: ["serve", "--model", m],
    "benchmark": lambda m, w: ["benchmark", m, "--out", w / "speed", "--repeats", "1", "--warmup", "0"],
    "student": lambda m, w: ["student", "--teacher", m, "--out", w / "s", "--layers", "1"],
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_model_without_tokenizer_is_refused(monkeypatch, capfd, work, no_tokenizer, case):
    monkeypatch.setattr("uvicorn.run", _no_serve)
    args = TOKENIZER_CASES[case](no_tokenizer, work)
    assert_user_error(monkeypatch, capfd, work, args, "no tokenizer files")


@pytest.mark.parametrize("case", ["serve", "benchmark"])
def test_onnx_export_without_tokenizer_is_refused(monkeypatch, capfd, work, onnx_no_tokenizer, case):
    monkeypatch.setattr("uvicorn.run", _no_serve)
    args = TOKENIZER_CASES[case](onnx_no_tokenizer, work)
    assert_user_error(monkeypatch, capfd, work, args, "no tokenizer files")


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


def test_evaluate_unknown_label_value_is_named(monkeypatch, capfd, work, yes_no_model):
    data = labelled_csv(work / "maybe.csv", ["yes", "maybe", "no"])
    args = ["evaluate", "--model", yes_no_model, "--data", data, "--out", work / "ev"]
    line = assert_user_error(monkeypatch, capfd, work, args, "'maybe'")
    assert "no, yes" in line


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
def test_blank_text_rows_are_refused_with_row_numbers(monkeypatch, capfd, work, model):
    data = write(work / "blank.csv", 'text,target\nfire here,1\n"   ",0\nnice day,0\n,1\n')
    line = assert_user_error(monkeypatch, capfd, work,
                             ["finetune", "--model", model, "--data", data, "--out", work / "o", *FAST],
                             "2 rows have an empty text")
    assert "data rows 2, 4" in line


def test_jsonl_null_text_is_not_the_string_nan(monkeypatch, capfd, work, model):
    rows = [{"text": "fire here", "label": 1}, {"text": None, "label": 0}, {"text": "ok", "label": 0}]
    data = write(work / "null.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert_user_error(monkeypatch, capfd, work,
                      ["predict", "--model", model, "--data", data, "--out", work / "p.csv"], "data rows 2")
    nulls = write(work / "nl.jsonl", json.dumps({"text": "a b", "label": None}) + "\n")
    with pytest.raises(UserError, match="empty label"):
        load_table(nulls)


# ----------------------------------------------------------------------------- 5. a single class
def test_single_class_labels_are_refused_before_training(monkeypatch, capfd, work, model):
    for labels, name in ((["1"] * 10, "'1'"), (["yes"] * 10, "'yes'")):
        data = labelled_csv(work / "one.csv", labels)
        line = assert_user_error(monkeypatch, capfd, work,
                                 ["finetune", "--model", model, "--data", data, "--out", work / "o", *FAST],
                                 "at least two classes")
        assert name in line


# ----------------------------------------------------------------------------- 6. signals
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


def test_keyboard_interrupt_inside_a_command_is_not_success(monkeypatch, capfd, work, model):
    """typer turns a bare KeyboardInterrupt into a returned 130 that used to become exit 0."""
    import distilprune.jobs.inference as inference

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "SavedClassifier", interrupt)
    code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", model, "--text", "fire")
    assert code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted"]


# ----------------------------------------------------------------------------- 7. impossible --out
OUT_CASES = {
    "finetune": lambda m, w, o: ["finetune", "--model", m, "--data", w / "good.csv", "--out", o, *FAST],
    "student": lambda m, w, o: ["student", "--teacher", m, "--out", o, "--layers", "1"],
    "fit-mlm-head": lambda m, w, o: ["fit-mlm-head", "--teacher", m, "--out", o, "--corpus", w / "good.csv",
                                     "--steps", "1"],
    "distill-mlm": lambda m, w, o: ["distill-mlm", "--teacher", m, "--out", o, "--corpus", w / "good.csv",
                                    "--steps", "1"],
    "export": lambda m, w, o: ["export", "--model", m, "--out", o],
    "predict": lambda m, w, o: ["predict", "--model", m, "--data", w / "good.csv", "--out", o],
}


@pytest.mark.parametrize("case", list(OUT_CASES))
@pytest.mark.parametrize("where", ["proc", "under_file"])
def test_impossible_out_fails_before_any_work(monkeypatch, capfd, work, model, case, where):
    import distilprune.jobs.distill as distill
    import distilprune.jobs.finetune as finetune

    for module in (distill, finetune):
        monkeypatch.setattr(module, "train", _no_serve)  # nothing may train
    blocker = write(work / "a_file", "x")
    out = Path("/proc/distilprune-x") if where == "proc" else blocker / "sub" / "out"
    fragment = "/proc is not writable" if where == "proc" else "a_file is a file"
    assert_user_error(monkeypatch, capfd, work, OUT_CASES[case](model, work, out), fragment)


# ----------------------------------------------------------------------------- 8. recipe keys
def test_top_level_key_beside_a_section_is_an_error(monkeypatch, capfd, work, model):
    recipe = write(work / "recipe.yaml", "finetune:\n  train:\n    epochs: 1\nepochs: 3\n")
    args = OUT_CASES["finetune"](model, work, work / "o")
    assert_user_error(monkeypatch, capfd, work, [*args, "--recipe", recipe], "unknown top-level key 'epochs'")


# ----------------------------------------------------------------------------- 9. leftovers of killed saves
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
    code, _out, err = run_cli(monkeypatch, capfd, *OUT_CASES["finetune"](model, work, work / "ft"))
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
    code, _out, err = run_cli(monkeypatch, capfd, *OUT_CASES["finetune"](model, work, work / "ft"))
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


# ----------------------------------------------------------------------------- 10. concurrent runs
def test_second_run_on_the_same_out_fails_at_start(monkeypatch, capfd, work, model):
    import fcntl

    import distilprune.jobs.finetune as finetune

    monkeypatch.setattr(finetune, "train", _no_serve)
    with (work / ".ft.lock").open("w") as held:  # another run's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        line = assert_user_error(monkeypatch, capfd, work, OUT_CASES["finetune"](model, work, work / "ft"),
                                 "is writing")
    assert "PID 4242" in line


def test_lock_is_gone_after_a_run(monkeypatch, capfd, work, model):
    code, _out, err = run_cli(monkeypatch, capfd, *OUT_CASES["predict"](model, work, work / "p.csv"))
    assert code == 0, err
    assert not (work / ".p.csv.lock").exists()


# ----------------------------------------------------------------------------- 11. truncated weights
@pytest.fixture(scope="module")
def truncated(tmp_path_factory, model) -> Path:
    out = tmp_path_factory.mktemp("truncated") / "model"
    shutil.copytree(model, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return out


@pytest.mark.parametrize("case", ["predict_text", "predict_data", "evaluate", "finetune", "export", "serve"])
def test_truncated_weights_are_one_line(monkeypatch, capfd, work, truncated, case):
    monkeypatch.setattr("uvicorn.run", _no_serve)
    args = TOKENIZER_CASES[case](truncated, work)
    assert_user_error(monkeypatch, capfd, work, args, "(truncated or corrupt)")


# ----------------------------------------------------------------------------- 12. numeric ranges
NUMERIC_CASES = {
    "batch_size_0": (["--batch-size", "0"], "batch_size"),
    "batch_size_neg": (["--batch-size", "-1"], "batch_size"),
    "lr_neg": (["--lr", "-1"], "lr"),
    "limit_neg": (["--limit", "-5"], "limit"),
    "seed_neg": (["--seed", "-1"], "seed"),
    "max_steps_0": (["--max-steps", "0"], "max_steps"),
    "epochs_0": (["--epochs", "0"], "epochs"),
    "checkpoint_every_0": (["--checkpoint-every", "0"], "checkpoint_every"),
    "val_fraction_1": (["--val-fraction", "1"], "val_fraction"),
}


@pytest.mark.parametrize("case", list(NUMERIC_CASES))
def test_numeric_options_are_range_checked(monkeypatch, capfd, work, model, case):
    extra, fragment = NUMERIC_CASES[case]
    args = ["finetune", "--model", model, "--data", work / "good.csv", "--out", work / "o",
            "--max-length", "16", *extra]
    assert_user_error(monkeypatch, capfd, work, args, fragment)


@pytest.mark.parametrize("sizes", ["abc", "1,0", "8,,x"])
def test_benchmark_batch_sizes_are_checked(monkeypatch, capfd, work, model, sizes):
    args = ["benchmark", model, "--out", work / "speed", "--batch-sizes", sizes]
    assert_user_error(monkeypatch, capfd, work, args, "--batch-sizes")


# ----------------------------------------------------------------------------- 13. more classes than the head
def test_more_classes_than_the_saved_head(monkeypatch, capfd, work, model):
    data = labelled_csv(work / "three.csv", ["0", "1", "2"] * 6)
    recipe = write(work / "three.yaml", "finetune:\n  data:\n    num_labels: 3\n")
    args = ["finetune", "--model", model, "--data", data, "--out", work / "o", "--recipe", recipe, *FAST]
    line = assert_user_error(monkeypatch, capfd, work, args, "2-class")
    assert "3 classes" in line


# ----------------------------------------------------------------------------- 14. messages
def test_bad_jsonl_line_is_named(monkeypatch, capfd, work, model):
    data = write(work / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": oops}\n')
    assert_user_error(monkeypatch, capfd, work,
                      ["predict", "--model", model, "--data", data, "--out", work / "p.csv"], "line 3")


def test_onnx_file_where_a_model_directory_is_expected(monkeypatch, capfd, work, onnx_no_tokenizer):
    onnx = onnx_no_tokenizer / "model.onnx"
    line = assert_user_error(monkeypatch, capfd, work, ["predict", "--model", onnx, "--text", "fire"],
                             "is a file")
    assert "not found" not in line


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


# ----------------------------------------------------------------------------- 15. permissions
@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_follow_the_umask(monkeypatch, capfd, work, model, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        code, _out, err = run_cli(monkeypatch, capfd, *OUT_CASES["finetune"](model, work, work / "ft"))
        assert code == 0, err
        code, _out, err = run_cli(monkeypatch, capfd, *OUT_CASES["predict"](model, work, work / "p.csv"))
        assert code == 0, err
    finally:
        os.umask(previous)
    assert (work / "ft").stat().st_mode & 0o777 == dir_mode
    assert (work / "ft" / "metrics.json").stat().st_mode & 0o777 == file_mode
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
    args = [*OUT_CASES["finetune"](model, work, work / "ft"), "--checkpoint-every", "1"]
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 143, err
    assert snapshot(work) == before
