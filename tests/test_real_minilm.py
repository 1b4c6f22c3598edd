"""The real packaged MiniLM-L6 on real disaster tweets: a few fine-tuning steps and a student."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distilprune import cli
from distilprune.models.registry import resolve_model

pytestmark = pytest.mark.real


def cli_ok(monkeypatch, capsys, *args) -> str:
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["distilprune", *map(str, args)])
    try:
        cli.main()
    except SystemExit as exc:
        pytest.fail(f"distilprune {args[0]} exited {exc.code}: {capsys.readouterr().err[-2000:]}")
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def minilm() -> Path:
    from distilprune.errors import UserError

    try:
        return Path(resolve_model("minilm-l6"))
    except UserError as exc:
        pytest.skip(f"minilm-l6 is not installed: {exc}")


@pytest.fixture
def tweets(shared_data, tmp_path) -> Path:
    """A seeded sample of 192 labelled tweets, written to a temporary CSV."""
    source = shared_data / "disaster_tweets" / "train.csv"
    if not source.is_file():
        pytest.skip("disaster_tweets/train.csv is not available")
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    sample = random.Random(0).sample(rows, 192)
    path = tmp_path / "tweets.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(sample)
    return path


def test_finetune_real_minilm(minilm, tweets, tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("finetune:\n  train:\n    log_every: 1\n    warmup_ratio: 0.0\n")
    run = tmp_path / "run"
    cli_ok(
        monkeypatch,
        capsys,
        "finetune",
        "--model",
        "minilm-l6",
        "--data",
        tweets,
        "--out",
        run,
        "--recipe",
        recipe,
        "--limit",
        "128",
        "--max-steps",
        "8",
        "--batch-size",
        "16",
        "--max-length",
        "48",
        "--lr",
        "1e-4",
        "--preprocess",
        "tweet",
    )
    meta = json.loads((run / "distilprune.json").read_text())
    assert meta["data"]["n_train"] == 128 and meta["train"]["steps"] == 8
    assert meta["preprocess"] == ["html", "urls", "users", "hashtags", "emoji", "whitespace"]
    assert meta["parameters"] > 20_000_000
    losses = [row["loss"] for row in json.loads((run / "train_log.json").read_text())["losses"]]
    assert len(losses) == 8 and all(0 < v < 5 for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    accuracy = meta["metrics"]["accuracy"]
    assert last < first or accuracy > 0.4, (losses, accuracy)

    evaluation = tmp_path / "eval"
    cli_ok(monkeypatch, capsys, "evaluate", "--model", run, "--data", tweets, "--out", evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["n"] == 192 and metrics["accuracy"] > 0.4
    out = cli_ok(
        monkeypatch,
        capsys,
        "predict",
        "--model",
        run,
        "--text",
        "Forest fire near La Ronge Sask. Canada #wildfire",
    )
    answer = json.loads(out)
    assert answer["label"] in ("0", "1") and sum(answer["probabilities"]) == pytest.approx(
        1, abs=1e-3
    )


def test_student_from_real_minilm(minilm, tmp_path, monkeypatch, capsys):
    out = tmp_path / "student"
    text = cli_ok(
        monkeypatch, capsys, "student", "--model", "minilm-l6", "--out", out, "--layers", "3"
    )
    assert "3L from 6L" in text
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    meta = json.loads((out / "distilprune.json").read_text())
    assert meta["student_layers"] == 3 and meta["teacher_layers"] == 6
    assert meta["parameters"] < meta["teacher_parameters"]
    assert 0.5 < meta["parameter_ratio"] < 1.0

    teacher = load_file(
        minilm / "model.safetensors"
    )  # sentence-transformers keys: no "bert." prefix
    student = load_file(out / "model.safetensors")
    for i, source in enumerate([0, 2, 4]):  # every other layer
        prefix = f"bert.encoder.layer.{i}."
        layer_keys = [k for k in student if k.startswith(prefix)]
        assert len(layer_keys) == 16
        for key in layer_keys:
            origin = f"encoder.layer.{source}." + key.removeprefix(prefix)
            assert torch.equal(student[key], teacher[origin]), key
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(student[word], teacher["embeddings.word_embeddings.weight"])
    assert not any(k.startswith("bert.encoder.layer.3.") for k in student)
