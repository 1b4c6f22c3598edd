"""End-to-end CLI jobs on tiny random models: finetune -> evaluate -> predict for every
architecture; MLM head -> pruned general distillation -> sparsity report -> mask-locked and
distilled fine-tuning; YAML recipes overridden by flags."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, SAMPLE_TEXTS, run_cli
from safetensors.torch import load_file

from distilprune import cli
from distilprune.jobs import distill as distill_job

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN = ["--max-steps", "3", "--batch-size", "8", "--max-length", "32"]
PRUNABLE = re.compile(r"(^|\.)layers?\.\d+\.")


def cli_ok(monkeypatch, capsys, *args) -> str:
    """Run ``distilprune ARGS`` in-process; it must succeed. Returns its stdout."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["distilprune", *map(str, args)])
    try:
        cli.main()
    except SystemExit as exc:  # main() only exits on errors
        pytest.fail(
            f"distilprune {' '.join(map(str, args))} exited {exc.code}: "
            f"{capsys.readouterr().err[-2000:]}"
        )
    return capsys.readouterr().out


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def read_json(path: Path):
    return json.loads(path.read_text())


def encoder_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The prunable matrices (transformer-layer weights, no norms/biases) of a saved model."""
    tensors = load_file(model_dir / "model.safetensors")
    return {
        k: v
        for k, v in tensors.items()
        if PRUNABLE.search(k) and v.ndim == 2 and not re.search("norm|bias|embed", k, re.IGNORECASE)
    }


def unlabelled_csv(path: Path, n: int = 13) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "keyword", "location", "text"])
        for i in range(n):
            writer.writerow([100 + i, "", "", f"{SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} !{i}"])
    return path


def corpus_file(path: Path, n: int = 80) -> Path:
    lines = [f"{SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} line {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_json_stream(text: str) -> list:
    decoder, items, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        item, end = decoder.raw_decode(text, pos)
        items.append(item)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return items


# ----------------------------------------------------------------------------- every architecture
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_finetune_evaluate_predict(
    arch, tiny_model_factory, tiny_csv, tmp_path, monkeypatch, capsys
):
    model = tiny_model_factory(arch, 2)
    run = tmp_path / "run"
    cli_ok(
        monkeypatch, capsys, "finetune", "--model", model, "--data", tiny_csv, "--out", run, *TRAIN
    )

    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "distilprune.json",
        "metrics.json",
        "split.json",
    ):
        assert (run / name).is_file(), name
    assert is_png(run / "confusion_matrix.png")
    assert not list(tmp_path.glob(".run.tmp-*"))  # no temporary directory left behind
    meta = read_json(run / "distilprune.json")
    assert meta["kind"] == "classifier"
    assert meta["label_names"] == ["0", "1"]
    assert meta["preprocess"] == [] and meta["max_length"] == 32
    assert meta["data"]["train_sha256"] == hashlib.sha256(tiny_csv.read_bytes()).hexdigest()
    assert meta["train"]["steps"] == 3
    assert 0.0 <= meta["metrics"]["accuracy"] <= 1.0
    assert meta["metrics"] == read_json(run / "metrics.json")
    split = read_json(run / "split.json")
    assert split["n_train"] + split["n_val"] == 40 and split["n_val"] == meta["metrics"]["n"]
    assert len(set(split["val_ids"])) == split["n_val"]

    evaluation = tmp_path / "eval"
    cli_ok(monkeypatch, capsys, "evaluate", "--model", run, "--data", tiny_csv, "--out", evaluation)
    metrics = read_json(evaluation / "metrics.json")
    assert metrics["n"] == 40 and 0.0 <= metrics["f1"] <= 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == 40
    assert is_png(evaluation / "confusion_matrix.png") and is_png(evaluation / "pr_curve.png")

    # predictions on the labelled file agree with the confusion matrix of `evaluate`
    preds = tmp_path / "preds.csv"
    cli_ok(monkeypatch, capsys, "predict", "--model", run, "--data", tiny_csv, "--out", preds)
    with preds.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "target"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(40)]
    predicted_positive = sum(int(r[1]) for r in rows[1:])
    assert predicted_positive == sum(row[1] for row in metrics["confusion_matrix"])

    test_file = unlabelled_csv(tmp_path / "test.csv")
    preds_test = tmp_path / "test_preds.csv"
    out = cli_ok(
        monkeypatch, capsys, "predict", "--model", run, "--data", test_file, "--out", preds_test
    )
    assert "13" in out
    with preds_test.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [str(100 + i) for i in range(13)]
    assert {r["target"] for r in rows} <= {"0", "1"}

    texts = [f"{SAMPLE_TEXTS[0]} !0", "lovely beach day"]
    out = cli_ok(
        monkeypatch, capsys, "predict", "--model", run, "--text", texts[0], "--text", texts[1]
    )
    answers = parse_json_stream(out)
    assert [a["text"] for a in answers] == texts
    for answer in answers:
        assert answer["label"] in ("0", "1")
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-3)
        assert answer["label"] == str(max(range(2), key=lambda i: answer["probabilities"][i]))
    assert answers[0]["label"] == rows[0]["target"]  # same text, same answer as the file


# ----------------------------------------------------------------------------- compression pipeline
@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_mlm_distill_prune_lock_and_task_distill(
    arch, tiny_model_factory, tiny_csv, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DISTILPRUNE_HOME", str(tmp_path / "home"))
    teacher = tiny_model_factory(arch, 4)
    corpus = corpus_file(tmp_path / "corpus.txt")
    small = ["--batch-size", "8", "--max-length", "32", "--corpus", corpus]

    mlm = tmp_path / "mlm"
    out = cli_ok(
        monkeypatch,
        capsys,
        "fit-mlm-head",
        "--model",
        teacher,
        "--out",
        mlm,
        "--max-steps",
        "3",
        *small,
    )
    assert "masked-token accuracy" in out
    meta = read_json(mlm / "distilprune.json")
    assert meta["kind"] == "masked-lm" and meta["train"]["steps"] == 3
    assert any("MaskedLM" in a for a in read_json(mlm / "config.json")["architectures"])
    # the encoder was frozen: its weights are the teacher's
    before, after = encoder_weights(teacher), encoder_weights(mlm)
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[k], after[k]) for k in before)

    student = tmp_path / "student"
    cli_ok(
        monkeypatch,
        capsys,
        "distill-mlm",
        "--teacher",
        mlm,
        "--out",
        student,
        "--layers",
        "2",
        "--prune",
        "block",
        "--final-sparsity",
        "0.5",
        "--prune-scope",
        "global",
        "--max-steps",
        "4",
        "--cos-layers",
        "all",
        *small,
    )
    config = read_json(student / "config.json")
    assert config.get("num_hidden_layers", config.get("n_layers")) == 2
    run_config = read_json(student / "distilprune.json")["config"]
    assert run_config["loss"]["cos_layers"] == "all" and run_config["prune"]["scope"] == "global"
    assert (student / "sparsity.json").is_file() and is_png(student / "sparsity.png")

    report_dir = tmp_path / "report"
    cli_ok(monkeypatch, capsys, "sparsity", student, "--out", report_dir)
    report = read_json(report_dir / "sparsity.json")
    assert report["prunable"]["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert all(t["block_size"] is not None and t["block_size"] >= 4 for t in report["tensors"])
    assert is_png(report_dir / "sparsity.png")
    pruned = encoder_weights(student)
    zeros = sum(int((w == 0).sum()) for w in pruned.values())
    assert zeros / sum(w.numel() for w in pruned.values()) == pytest.approx(0.5, abs=0.03)

    # sparse transfer: fine-tuning with --lock-sparsity keeps every zero, and only those
    locked = tmp_path / "locked"
    cli_ok(
        monkeypatch,
        capsys,
        "finetune",
        "--model",
        student,
        "--data",
        tiny_csv,
        "--out",
        locked,
        "--lock-sparsity",
        "--lr",
        "1e-3",
        *TRAIN,
    )
    tuned = encoder_weights(locked)
    assert tuned.keys() == pruned.keys()
    for key in pruned:
        assert torch.equal(tuned[key] == 0, pruned[key] == 0), key
    assert any(not torch.equal(tuned[k], pruned[k]) for k in pruned), "fine-tuning changed nothing"
    assert read_json(locked / "distilprune.json")["sparsity"] == pytest.approx(0.5, abs=0.03)

    # structured shrinking of the sparse model, then a locked recovery fine-tune keeps its zeros
    shrunk, recovered = tmp_path / "shrunk", tmp_path / "recovered"
    cli_ok(monkeypatch, capsys, "shrink", "--model", locked, "--out", shrunk, "--heads", "0.25",
           "--neurons", "0.5")
    assert read_json(shrunk / "config.json")["pruned_heads"]
    cli_ok(monkeypatch, capsys, "finetune", "--model", shrunk, "--data", tiny_csv, "--out", recovered,
           "--lock-sparsity", "--lr", "1e-3", *TRAIN)
    cut, regrown = encoder_weights(shrunk), encoder_weights(recovered)
    assert sum(w.numel() for w in cut.values()) < sum(w.numel() for w in tuned.values())
    for key in cut:
        assert torch.equal(regrown[key] == 0, cut[key] == 0), key

    # task distillation from a classifier teacher; its logits are cached under DISTILPRUNE_HOME
    kd = tmp_path / "kd"
    cli_ok(
        monkeypatch,
        capsys,
        "finetune",
        "--model",
        student,
        "--data",
        tiny_csv,
        "--out",
        kd,
        "--teacher",
        teacher,
        "--temperature",
        "3",
        *TRAIN,
    )
    meta = read_json(kd / "distilprune.json")
    assert meta["distillation"]["teacher"] == str(teacher)
    assert meta["distillation"]["temperature"] == 3.0
    assert meta["distillation"]["alpha_soft"] == 0.5  # defaults where no flag was given
    cache = list((tmp_path / "home" / "teacher_logits").glob("*.safetensors"))
    assert len(cache) == 1
    logits = load_file(cache[0])["logits"]
    assert logits.shape == (meta["data"]["n_train"], 2) and torch.isfinite(logits).all()

    def no_teacher_inference(*args, **kwargs):
        raise AssertionError("teacher logits were recomputed instead of read from the cache")

    monkeypatch.setattr(distill_job, "predict_texts", no_teacher_inference)
    cli_ok(
        monkeypatch,
        capsys,
        "finetune",
        "--model",
        student,
        "--data",
        tiny_csv,
        "--out",
        tmp_path / "kd2",
        "--teacher",
        teacher,
        *TRAIN,
    )
    assert list((tmp_path / "home" / "teacher_logits").glob("*.safetensors")) == cache
    # a different data set is a different cache entry (and needs the teacher again)
    with pytest.raises(AssertionError, match="recomputed"):
        distill_job.teacher_logits(str(teacher), ["another text"], 32)


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize(("config", "defaults"), [
    ("distilprune.jobs.distill:GeneralDistillConfig", {"lr": 2e-4, "epochs": 1.0, "patience": None}),
    ("distilprune.jobs.distill:MLMHeadConfig", {"lr": 1e-3, "epochs": 1.0, "patience": None}),
])
def test_a_partial_train_section_keeps_the_commands_own_defaults(config, defaults):
    """``distill-mlm --max-steps 100`` (a train section with one key) trained at TrainConfig's
    lr 5e-5 with patience 2 while --help promised the command's 2e-4 and no early stopping."""
    import importlib

    from distilprune.config import from_dict

    module, _, name = config.partition(":")
    cls = getattr(importlib.import_module(module), name)
    train = from_dict(cls, {"train": {"max_steps": 100}}).train
    assert {key: getattr(train, key) for key in defaults} == defaults
    assert train.max_steps == 100
    assert from_dict(cls, {"train": {"lr": 0.5, "patience": 3}}).train.patience == 3  # given keys win


def test_recipe_drives_finetune_and_flags_override(
    tiny_model_factory, tiny_csv, tmp_path, monkeypatch, capsys
):
    model = tiny_model_factory("bert", 2)
    out = tmp_path / "from_recipe"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "finetune:\n"
        f"  model: {model}\n"
        f"  out: {out}\n"
        "  data:\n"
        f"    train: {tiny_csv}\n"
        "    max_length: 24\n"
        "    val_fraction: 0.25\n"
        "    preprocess: [keyword, lowercase]\n"
        "  train:\n"
        "    max_steps: 2\n"
        "    batch_size: 8\n"
        "    lr: 1.0e-4\n"
        "distill_mlm:\n"  # another command's section may stand beside it (other top-level keys may not)
        "  steps: 1\n"
    )
    cli_ok(
        monkeypatch,
        capsys,
        "finetune",
        "--recipe",
        recipe,
        "--max-steps",
        "3",
        "--val-fraction",
        "0.2",
        "--set", "train.batch_size=4",  # dotted override beats the recipe
        "--set", "train.max_steps=5",  # ... but not a flag
        "--set", "train.patience=null",  # null switches a setting off
    )
    meta = read_json(out / "distilprune.json")
    config = meta["config"]
    assert config["train"]["max_steps"] == 3  # flag beats recipe and --set
    assert config["train"]["batch_size"] == 4 and config["train"]["patience"] is None
    assert meta["train"]["steps"] == 3
    assert config["data"]["val_fraction"] == 0.2 and meta["data"]["n_val"] == 8
    assert config["train"]["lr"] == 1e-4  # from the recipe
    assert meta["max_length"] == 24
    assert meta["preprocess"] == ["keyword", "lowercase"]
    assert config["train"]["epochs"] == 3.0  # untouched default


@pytest.mark.parametrize("flags, expected", [
    ([], (True, True, True, True)),  # unset flags keep the recipe's settings
    (["--no-lock-sparsity", "--no-resume", "--no-qat", "--no-overwrite"], (False, False, False, False)),
])
def test_switch_flags_turn_recipe_settings_off(flags, expected, tmp_path, monkeypatch, capsys):
    import distilprune.jobs.distill as distill_job

    seen = []
    monkeypatch.setattr(distill_job, "task_finetune", lambda cfg, **_: seen.append(cfg) or {
        "data": {"n_val": 0}, "metrics": {}})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("finetune:\n  model: m\n  out: o\n  overwrite: true\n  lock_sparsity: true\n"
                      "  qat: {freeze_observers_at: 0.5}\n  data: {train: t.csv}\n  train: {resume: true}\n")
    cli_ok(monkeypatch, capsys, "finetune", "--recipe", recipe, *flags)
    (cfg,) = seen
    assert (cfg.lock_sparsity, cfg.train.resume, cfg.qat is not None, cfg.overwrite) == expected


def test_dotted_overrides_read_yaml_values_and_keep_none():
    from distilprune.config import dotted_overrides, merge

    overrides = dotted_overrides(["train.lr=1e-4", "train.seed=7", "qat=null", "data.preprocess=[a, b]",
                                  "data.text_column=body"])
    assert overrides == {"train": {"lr": "1e-4", "seed": 7}, "qat": None,
                         "data": {"preprocess": ["a", "b"], "text_column": "body"}}
    base = {"train": {"lr": 5e-5, "epochs": 3}, "qat": {"steps": 10}, "out": "x"}
    assert merge(base, overrides, keep_none=True) == {
        "train": {"lr": "1e-4", "seed": 7, "epochs": 3}, "qat": None, "out": "x",
        "data": {"preprocess": ["a", "b"], "text_column": "body"}}
    assert base["train"] == {"lr": 5e-5, "epochs": 3}  # the recipe itself is not changed


# ----------------------------------------------------------------------------- reproducibility
@pytest.fixture
def headless_model(tiny_model_factory, tmp_path) -> Path:
    """A tiny BERT encoder saved without any head (as MiniLM ships): loading adds a fresh one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = tiny_model_factory("bert", 2)
    out = tmp_path / "headless"
    AutoModelForSequenceClassification.from_pretrained(source).base_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.mark.parametrize("command", ["finetune", "fit-mlm-head"])
def test_same_seed_same_weights_whatever_the_global_rng(
    command, headless_model, tiny_csv, tmp_path, monkeypatch, capsys
):
    """A seeded run repeats exactly, though the fresh head is built before training starts
    (it was initialised from whatever state torch's global RNG was in: runs differed)."""
    data = (["--data", tiny_csv] if command == "finetune"
            else ["--corpus", corpus_file(tmp_path / "corpus.txt")])
    runs = []
    for rng_state in (1, 2):
        torch.manual_seed(rng_state)
        out = tmp_path / f"run{rng_state}"
        cli_ok(monkeypatch, capsys, command, "--model", headless_model, *data, "--out", out, *TRAIN)
        runs.append(load_file(out / "model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_student_of_a_headless_teacher_is_the_same_on_every_run(headless_model, tmp_path):
    """``distilprune student`` has no seed option: the head the teacher lacks is built under a
    fixed one, whatever torch's global RNG state."""
    students = []
    for rng_state in (1, 2):
        torch.manual_seed(rng_state)
        out = tmp_path / f"student{rng_state}"
        distill_job.make_student(distill_job.StudentConfig(str(headless_model), str(out), layers=1))
        students.append(load_file(out / "model.safetensors"))
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])


def test_pruned_mlm_distillation_repeats_exactly(headless_model, tmp_path, monkeypatch, capsys):
    """The tasks benchmark's sparse pre-training (cosine on every layer, activation-pruned, masks
    updated as it goes) gives the same weights and masks on every seeded run, whatever torch's global
    RNG: a table grown over several sessions can re-make the same sparse model."""
    corpus = corpus_file(tmp_path / "corpus.txt")
    mlm = tmp_path / "mlm"
    cli_ok(monkeypatch, capsys, "fit-mlm-head", "--model", headless_model, "--corpus", corpus, "--out", mlm,
           *TRAIN)
    runs = []
    for rng_state in (1, 2):
        torch.manual_seed(rng_state)
        out = tmp_path / f"sparse{rng_state}"
        cli_ok(monkeypatch, capsys, "distill-mlm", "--teacher", mlm, "--corpus", corpus, "--out", out,
               "--layers", "2", "--alpha-ce", "0", "--alpha-mlm", "0", "--cos-layers", "all",
               "--prune", "unstructured", "--prune-criterion", "activation", "--final-sparsity", "0.5",
               "--prune-end", "0.5", "--prune-every", "1", "--max-steps", "4", "--batch-size", "8",
               "--max-length", "32")
        runs.append(load_file(out / "model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(bool((w == 0).any()) for k, w in runs[0].items() if PRUNABLE.search(k) and w.ndim == 2)


def test_locked_continued_pretraining_keeps_the_zeros_and_trains_the_rest(
    headless_model, tmp_path, monkeypatch, capsys
):
    """``distill-mlm --student SPARSE --lock-sparsity``: a sparse model's pre-training continues
    (here on the hidden-state MSE alone) with exactly its zeros kept; without --student it refuses."""
    corpus = corpus_file(tmp_path / "corpus.txt")
    mlm, sparse, more = tmp_path / "mlm", tmp_path / "sparse", tmp_path / "more"
    small = ["--corpus", corpus, "--batch-size", "8", "--max-length", "32", "--alpha-ce", "0",
             "--alpha-mlm", "0", "--cos-layers", "all"]
    cli_ok(monkeypatch, capsys, "fit-mlm-head", "--model", headless_model, "--corpus", corpus, "--out", mlm,
           *TRAIN)
    cli_ok(monkeypatch, capsys, "distill-mlm", "--teacher", mlm, "--out", sparse, "--layers", "2",
           "--prune", "unstructured", "--final-sparsity", "0.5", "--max-steps", "3", *small)
    cli_ok(monkeypatch, capsys, "distill-mlm", "--teacher", mlm, "--student", sparse, "--out", more,
           "--lock-sparsity", "--alpha-cos", "0", "--alpha-mse", "1", "--max-steps", "3", "--lr", "1e-2",
           *small)
    before, after = encoder_weights(sparse), encoder_weights(more)
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[k] == 0, after[k] == 0) for k in before)
    assert sum(int((w == 0).sum()) for w in before.values()) > 0
    assert any(not torch.equal(before[k], after[k]) for k in before)
    losses = read_json(more / "train_log.json")["losses"]
    assert losses and all(entry["mse"] > 0 and "cos" not in entry for entry in losses)
    assert read_json(more / "sparsity.json")["prunable"]["sparsity"] == pytest.approx(0.5, abs=0.03)

    code, _, err = run_cli(monkeypatch, capsys, "distill-mlm", "--teacher", mlm, "--out", tmp_path / "x",
                           "--lock-sparsity", *small)
    assert code == 2 and "give --student" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
