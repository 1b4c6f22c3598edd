"""The CLI's bad-input contract: exit code 2, one ``error:`` line on stderr, nothing written.

``distilprune.cli.main`` runs in-process with a patched ``sys.argv`` (a subprocess per case
would re-import torch every time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SAMPLE_TEXTS, assert_user_error, run_cli, snapshot


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def good_csv(path: Path, n: int = 20) -> Path:
    rows = "".join(f'{i},"{SAMPLE_TEXTS[i % 8]} {i}",{i % 2}\n' for i in range(n))
    return write(path, "id,text,target\n" + rows)


@pytest.fixture(scope="module")
def model(tiny_model_factory) -> Path:
    return tiny_model_factory("bert", 2)


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory, model) -> Path:
    """A tiny masked-LM (its head saved with it, i.e. 'fitted')."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path_factory.mktemp("mlm") / "teacher"
    config = AutoConfig.from_pretrained(model)
    AutoModelForMaskedLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


@pytest.fixture
def work(tmp_path) -> Path:
    good_csv(tmp_path / "good.csv")
    return tmp_path


# ----------------------------------------------------------------------------- data
def _finetune(model, data, out, *extra):
    return [
        "finetune",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "16",
        *extra,
    ]


DATA_CASES = {
    "missing_file": (None, [], "data file not found"),
    "empty_file": ("", [], "is empty"),
    "header_only": ("id,text,target\n", [], "no data rows"),
    "wrong_text_column": ("good", ["--text-column", "body"], "text column 'body'"),
    "wrong_label_column": ("good", ["--label-column", "y"], "label column 'y'"),
    "no_label_column": ("id,text\n1,hello there\n2,fire fire\n", [], "no label column"),
    "non_binary": ("text,target\na,0\nb,1\nc,2\nd,1\n", [], "binary"),
    "bad_preprocess": ("good", ["--preprocess", "html,bogus"], "unknown preprocessing step"),
    "bad_imbalance": ("good", ["--imbalance", "smote"], "imbalance"),
    "bad_prune": ("good", ["--prune", "random"], "unknown pruning method"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_finetune_bad_data(monkeypatch, capfd, work, model, case):
    content, extra, fragment = DATA_CASES[case]
    data = work / "good.csv" if content == "good" else work / "data.csv"
    if content not in (None, "good"):
        write(data, content)
    assert_user_error(
        monkeypatch, capfd, work, _finetune(model, data, work / "out", *extra), fragment
    )


def test_non_utf8_file(monkeypatch, capfd, work, model):
    data = work / "latin1.csv"
    data.write_bytes("text,target\ncaf\xe9 br\xfbl\xe9,1\nna\xefve,0\n".encode("latin-1"))
    assert_user_error(monkeypatch, capfd, work, _finetune(model, data, work / "out"), "not UTF-8")


def test_bracketed_path_is_not_rich_markup(monkeypatch, capfd, work, model):
    missing = work / "runs[/v2]" / "data[bold].csv"
    line = assert_user_error(
        monkeypatch, capfd, work, _finetune(model, missing, work / "out"), "data file not found"
    )
    assert "runs[/v2]/data[bold].csv" in line


# ----------------------------------------------------------------------------- models / output
def test_unknown_model_alias(monkeypatch, capfd, work):
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        _finetune("minilm-l99", work / "good.csv", work / "out"),
        "minilm-l99",
    )


def test_directory_without_config(monkeypatch, capfd, work):
    (work / "not_a_model").mkdir()
    write(work / "not_a_model" / "README.txt", "hello")
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        _finetune(work / "not_a_model", work / "good.csv", work / "out"),
        "no config.json",
    )


def test_existing_output_without_overwrite(monkeypatch, capfd, work, model):
    out = work / "out"
    out.mkdir()
    write(out / "keep.txt", "precious")
    assert_user_error(
        monkeypatch, capfd, work, _finetune(model, work / "good.csv", out), "already exists"
    )
    assert (out / "keep.txt").read_text() == "precious"


def test_student_too_many_layers(monkeypatch, capfd, work, model):
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["student", "--teacher", model, "--out", work / "s", "--layers", "9"],
        "layers",
    )


# ----------------------------------------------------------------------------- recipes
RECIPE_CASES = {
    "unknown_key": ("finetune:\n  train:\n    epochz: 2\n", "unknown key 'epochz'"),
    "unknown_top_key": ("finetune:\n  bogus: 1\n", "unknown key 'bogus'"),
    "wrong_type": ("finetune:\n  train:\n    epochs: many\n", "epochs"),
    "not_mapping": ("- a\n- b\n", "mapping"),
    "invalid_yaml": ("finetune:\n  train: [1, 2\n  lr: 3\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe(monkeypatch, capfd, work, model, case):
    content, fragment = RECIPE_CASES[case]
    recipe = write(work / "recipe.yaml", content)
    line = assert_user_error(
        monkeypatch,
        capfd,
        work,
        _finetune(model, work / "good.csv", work / "out", "--recipe", recipe),
        fragment,
    )
    if case == "wrong_type":
        assert "many" in line


def test_missing_recipe(monkeypatch, capfd, work, model):
    args = _finetune(model, work / "good.csv", work / "out", "--recipe", work / "nope.yaml")
    assert_user_error(monkeypatch, capfd, work, args, "recipe not found")


# ----------------------------------------------------------------------------- predict / evaluate
def test_predict_needs_data_and_out_or_text(monkeypatch, capfd, work, model):
    assert_user_error(monkeypatch, capfd, work, ["predict", "--model", model], "--text")
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["predict", "--model", model, "--data", work / "good.csv"],
        "--out",
    )


def test_predict_empty_text(monkeypatch, capfd, work, model):
    assert_user_error(
        monkeypatch, capfd, work, ["predict", "--model", model, "--text", "  "], "empty text"
    )


def test_predict_existing_out_unchanged(monkeypatch, capfd, work, model):
    write(work / "preds.csv", "id,target\n")
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["predict", "--model", model, "--data", work / "good.csv", "--out", work / "preds.csv"],
        "already exists",
    )
    assert (work / "preds.csv").read_text() == "id,target\n"


def test_evaluate_missing_model_dir(monkeypatch, capfd, work):
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["evaluate", "--model", work / "no_model", "--data", work / "good.csv"],
        "model not found",
    )


def test_evaluate_missing_data(monkeypatch, capfd, work, model):
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["evaluate", "--model", model, "--data", work / "nope.csv", "--out", work / "ev"],
        "data file not found",
    )


# ----------------------------------------------------------------------------- masked-LM jobs
def test_fit_mlm_head_missing_corpus(monkeypatch, capfd, work, model):
    args = [
        "fit-mlm-head",
        "--teacher",
        model,
        "--out",
        work / "mlm",
        "--corpus",
        work / "nope.txt",
        "--steps",
        "1",
        "--max-length",
        "16",
    ]
    assert_user_error(monkeypatch, capfd, work, args, "corpus file not found")


def test_distill_mlm_missing_corpus(monkeypatch, capfd, work, mlm_teacher):
    args = [
        "distill-mlm",
        "--teacher",
        mlm_teacher,
        "--out",
        work / "student",
        "--corpus",
        work / "nope.txt",
        "--steps",
        "1",
        "--max-length",
        "16",
    ]
    assert_user_error(monkeypatch, capfd, work, args, "corpus file not found")


def test_distill_mlm_teacher_without_fitted_head(monkeypatch, capfd, work, model):
    corpus = write(
        work / "corpus.txt", "\n".join(f"{t} number {i}" for i, t in enumerate(SAMPLE_TEXTS))
    )
    args = [
        "distill-mlm",
        "--teacher",
        model,
        "--out",
        work / "student",
        "--corpus",
        corpus,
        "--steps",
        "1",
        "--max-length",
        "16",
    ]
    assert_user_error(monkeypatch, capfd, work, args, "fit-mlm-head")


def test_distill_mlm_needs_teacher(monkeypatch, capfd, work):
    assert_user_error(monkeypatch, capfd, work, ["distill-mlm", "--out", work / "s"], "--teacher")


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--text", "fire"],  # missing required --model
        ["finetune", "--epochs", "many"],  # not a number
        ["finetune", "--no-such-flag"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2_without_traceback(monkeypatch, capfd, tmp_path, args):
    before = snapshot(tmp_path)
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert "Error:" in err
    assert snapshot(tmp_path) == before


def test_help_exits_0(monkeypatch, capfd):
    code, out, err = run_cli(monkeypatch, capfd, "finetune", "--help")
    assert code == 0, err
    assert "--lock-sparsity" in out and "Traceback" not in err
