"""Issue #21: every output format runs through evaluate/predict/benchmark's loader, carries its
label names and a model card that huggingface_hub parses."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import labelled_csv, run_cli

FAST = ["--max-steps", "2", "--batch-size", "8", "--max-length", "16"]
LABELS = ["no", "yes"]
# format -> (how it is made from the fine-tuned "model", expected model_kind, quantized)
FORMATS = {
    "model": (None, "torch", False),
    "qat": (None, "torch", True),
    "distilled": (None, "torch", False),
    "onnx": (["export"], "onnx", False),
    "onnx-int8": (["export", "--int8"], "onnx", True),
    "compact": (["export", "--format", "compact"], "compact", False),
    "sparse": (["export", "--format", "sparse"], "sparse", True),
    "shrunk": (["shrink", "--heads", "0.5"], "shrunk", False),
}


def _cli(*args: str | Path) -> None:
    """Run ``distilprune ARGS`` in-process (module fixtures cannot use ``run_cli``)."""
    from distilprune import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["distilprune", *map(str, args)])
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code in (0, None), f"distilprune {' '.join(map(str, args))} failed"


@pytest.fixture(scope="module")
def outputs(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    """Every format, made through the CLI from one tiny BERT trained on labels no/yes."""
    root = tmp_path_factory.mktemp("interop")
    data = labelled_csv(root / "data.csv", [LABELS[i % 2] for i in range(24)])
    base = tiny_model_factory("bert", 2)
    train = ["--data", data, *FAST, "--preprocess", "tweet"]
    _cli("finetune", "--model", base, "--out", root / "model", *train)
    _cli("finetune", "--model", base, "--out", root / "qat", "--qat", *train)
    _cli("finetune", "--model", base, "--out", root / "distilled", "--teacher", root / "model", *train)
    for name, (make, _kind, _q) in FORMATS.items():
        if make:
            _cli(make[0], "--model", root / "model", "--out", root / name, *make[1:])
    return {"data": data, **{name: root / name for name in FORMATS}}


def test_model_kind_is_decided_in_one_place(outputs):
    from distilprune.formats import model_kind

    assert {name: model_kind(outputs[name]) for name in FORMATS} == {
        name: kind for name, (_m, kind, _q) in FORMATS.items()}
    assert model_kind(outputs["onnx"] / "model.onnx") == "onnx"


def _predictions(path: Path) -> list[str]:
    with path.open() as handle:
        return [row["target"] for row in csv.DictReader(handle)]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_evaluates_and_predicts(name, command, outputs, tmp_path, monkeypatch, capfd):
    model, data = outputs[name], outputs["data"]
    if command == "evaluate":
        code, _out, err = run_cli(monkeypatch, capfd, "evaluate", "--model", model, "--data", data,
                                  "--out", tmp_path / "eval")
        assert code == 0, err
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert metrics["n"] == 24 and 0.0 <= metrics["accuracy"] <= 1.0
        return
    code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", model, "--data", data,
                              "--out", tmp_path / "p.csv")
    assert code == 0, err
    predicted = _predictions(tmp_path / "p.csv")
    assert len(predicted) == 24 and set(predicted) <= set(LABELS)
    if name in ("onnx", "compact"):  # fp32, lossless: the fine-tuned model's very answers
        code, _out, err = run_cli(monkeypatch, capfd, "predict", "--model", outputs["model"],
                                  "--data", data, "--out", tmp_path / "ref.csv")
        assert code == 0 and predicted == _predictions(tmp_path / "ref.csv"), err


def test_onnx_predict_applies_training_preprocessing(outputs):
    from distilprune.jobs.inference import SavedClassifier

    onnx, torch_model = SavedClassifier(outputs["onnx"]), SavedClassifier(outputs["model"])
    texts = ["Fire at http://t.co/x #WildFire @someone", "nice &amp; calm"]
    assert onnx.preprocess == torch_model.preprocess != []
    assert abs(onnx.logits(texts) - torch_model.logits(texts)).max() < 1e-4


@pytest.mark.parametrize("name", list(FORMATS))
def test_benchmark_loads_every_format(name, outputs):
    from distilprune.benchmark.speed import load_runner

    runner = load_runner(outputs[name], threads=1)
    assert runner.predict_logits(["fire in the city", "ok"]).shape == (2, 2)


@pytest.mark.parametrize("name", list(FORMATS))
def test_config_keeps_label_names(name, outputs):
    config = json.loads((outputs[name] / "config.json").read_text())
    assert config["id2label"] == {"0": "no", "1": "yes"}
    assert config["label2id"] == {"no": 0, "yes": 1}


@pytest.mark.parametrize("name", ["model", "qat", "distilled"])
def test_transformers_pipeline_returns_label_names(name, outputs):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(outputs[name]), device="cpu")
    assert {row["label"] for row in classify(["fire in the city", "ok", "lovely day"])} <= set(LABELS)


def test_integer_labels_stay_digits(tiny_model_factory, tmp_path):
    data = labelled_csv(tmp_path / "ints.csv", [str(i % 2) for i in range(16)])
    _cli("finetune", "--model", tiny_model_factory("bert", 2), "--data", data, "--out",
         tmp_path / "m", *FAST)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["label2id"] == {"0": 0, "1": 1}


@pytest.mark.parametrize("name", list(FORMATS))
def test_model_card_parses(name, outputs):
    from huggingface_hub import ModelCard

    from distilprune import __version__

    card = ModelCard.load(outputs[name] / "README.md")
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["data.csv"]
    assert meta["base_model"]
    assert "distilprune" in meta["tags"] and meta["library_name"]
    dp = meta["distilprune"]
    assert dp["version"] == __version__ and dp["format"] == FORMATS[name][1]
    assert dp["labels"] == LABELS and dp["config"]["data"]["max_length"] == 16
    assert (dp["quantization"] != "none (fp32)") == FORMATS[name][2]
    assert "sparsity" in dp
    assert "`urls`: replace links with `URL`" in card.text  # the preprocessing, for readers
    if name in ("model", "qat", "distilled"):  # measured on these very weights
        [result] = card.data.eval_results[:1]
        assert result.metric_type == "accuracy" and 0 <= result.metric_value <= 1
    else:
        assert not card.data.eval_results and dp["metrics"]["n"] > 0
    if name in ("onnx", "onnx-int8", "sparse"):
        assert dp["parity"]["n_texts"] > 0 and "Parity with the source model" in card.text


def test_static_int8_card_says_static(outputs, tmp_path):
    from huggingface_hub import ModelCard

    from distilprune.export.onnx import static_quantize_export

    static_quantize_export(outputs["onnx"], tmp_path / "static", ["fire in the city", "ok"] * 4)
    meta = ModelCard.load(tmp_path / "static" / "README.md").data.to_dict()
    assert "quantize_static" in meta["distilprune"]["quantization"] and "int8" in meta["tags"]


def test_version(monkeypatch, capfd):
    from distilprune import __version__

    code, out, _err = run_cli(monkeypatch, capfd, "--version")
    assert code == 0 and out.strip() == f"distilprune {__version__}"


def test_sparsity_and_benchmark_say_where_they_wrote(outputs, tmp_path, monkeypatch, capfd):
    code, out, err = run_cli(monkeypatch, capfd, "sparsity", outputs["model"], "--out", tmp_path / "s")
    assert code == 0 and f"wrote {tmp_path / 's' / 'sparsity.json'}" in out.replace("\n", ""), err
    code, out, err = run_cli(monkeypatch, capfd, "benchmark", outputs["onnx-int8"], "--out",
                             tmp_path / "b", "--repeats", "1", "--warmup", "0", "--batch-sizes", "1",
                             "--max-length", "16")
    assert code == 0 and str(tmp_path / "b.json") in out.replace("\n", ""), err
