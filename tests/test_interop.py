"""Issue #21: every output format runs through evaluate/predict/benchmark's loader, carries its
label names and a model card that huggingface_hub parses, and loads in the standard tool made for
it (transformers, Optimum, safetensors; plain onnxruntime in test_onnx_standalone.py) with the
project's own logits."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, SAMPLE_TEXTS, labelled_csv, run_cli

from distilprune.errors import UserError

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
    _cli("quantize", "--model", root / "onnx", "--out", root / "static", "--data", data, "--max-length", "16")
    _cli("fit-mlm-head", "--model", base, "--out", root / "mlm", "--corpus", data, "--max-steps", "2",
         "--batch-size", "8", "--max-length", "16")
    extra = {name: root / name for name in ("static", "mlm")}
    return {"data": data, **{name: root / name for name in FORMATS}, **extra}


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
    from distilprune.predictor import load_predictor

    onnx, torch_model = load_predictor(outputs["onnx"]), load_predictor(outputs["model"])
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
    assert code == 0 and str(tmp_path / "b" / "benchmark.json") in out.replace("\n", ""), err
    assert {p.name for p in (tmp_path / "b").iterdir()} >= {"benchmark.json", "benchmark.md", "benchmark.png"}


# ----------------------------------------------------------------------------- standard tools
TEXTS = [*SAMPLE_TEXTS, "Fire at http://t.co/x #WildFire @someone", "ok"]


def _project(folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The project's logits and labels for TEXTS, and TEXTS preprocessed as the model card says a
    user of another tool must do first."""
    from distilprune.data.preprocess import build_preprocessor
    from distilprune.predictor import load_predictor

    clf = load_predictor(folder)
    logits = clf.logits(TEXTS)
    fn = build_preprocessor(clf.preprocess)
    return logits, [clf.labels[i] for i in logits.argmax(-1)], [fn(t, {}) for t in TEXTS]


@pytest.mark.parametrize("name", ["model", "qat", "distilled"])
def test_transformers_gives_the_projects_logits(name, outputs):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    expected, labels, texts = _project(outputs[name])
    model = AutoModelForSequenceClassification.from_pretrained(outputs[name]).eval()
    tokenizer = AutoTokenizer.from_pretrained(outputs[name])
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=16,
                                   return_tensors="pt")).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    classify = pipeline("text-classification", model=str(outputs[name]), device="cpu")
    assert [r["label"] for r in classify(texts, truncation=True, max_length=16)] == labels


def test_neuron_shrunk_model_loads_in_plain_transformers(outputs, tmp_path):
    """Without removed heads a shrunk model is a plain checkpoint (smaller intermediate_size)."""
    from transformers import AutoModelForSequenceClassification

    from distilprune.formats import model_kind

    _cli("shrink", "--model", outputs["model"], "--out", tmp_path / "n", "--neurons", "0.5")
    assert model_kind(tmp_path / "n") == "torch"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "n")
    assert model.config.intermediate_size == 32
    expected, _labels, _texts = _project(tmp_path / "n")
    assert expected.shape == (len(TEXTS), 2)


def test_fill_mask_pipeline_loads_the_masked_lm(outputs):
    """fit-mlm-head / distill-mlm output: transformers' masked-LM class and fill-mask pipeline."""
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from distilprune.models.loading import load_masked_lm

    folder, texts = outputs["mlm"], ["fire in the [MASK]", "[MASK] near the city"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = AutoModelForMaskedLM.from_pretrained(folder).eval()(**enc).logits
        ours = load_masked_lm(folder)[0].eval()(**enc).logits
    assert (theirs - ours).abs().max() <= 1e-4
    answers = pipeline("fill-mask", model=str(folder), device="cpu")(texts[0])
    assert answers[0]["token"] == int(ours[enc["input_ids"] == tokenizer.mask_token_id][0].argmax())
    assert ModelCard.load(folder / "README.md").data.pipeline_tag == "fill-mask"


@pytest.mark.parametrize(("name", "weights"), [("compact", "model.compact.safetensors"),
                                               ("sparse", "model.sparse.safetensors")])
def test_own_layouts_are_plain_safetensors(name, weights, outputs):
    """Compact and sparse-engine directories: transformers cannot load them (their own layouts),
    but safetensors reads every tensor and the card says they need distilprune."""
    from huggingface_hub import ModelCard
    from safetensors.numpy import load_file

    assert not (outputs[name] / "model.safetensors").exists()
    tensors = load_file(outputs[name] / weights)
    assert tensors and all(t.size for t in tensors.values())
    assert ModelCard.load(outputs[name] / "README.md").data.library_name == "distilprune"


# ----------------------------------------------------------------------------- Optimum (side venv)
OPTIMUM_PYTHON = REPO_ROOT / "benchmarks" / "work" / "optimum-venv" / "bin" / "python"
needs_optimum = pytest.mark.skipif(
    not OPTIMUM_PYTHON.is_file(),
    reason="Optimum side venv missing: `make optimum` builds benchmarks/work/optimum-venv "
           "(optimum-onnx 0.1.0 needs transformers 4.57, which the main venv cannot hold)")

# transformers 4.57: Optimum's ORTModel (ONNX exports) or the plain model class (shrunk models).
SIDE = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tool, folder, texts = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
    if tool == "optimum":
        from optimum.onnxruntime import ORTModelForSequenceClassification as Auto
    else:
        Auto = AutoModelForSequenceClassification
    model, tokenizer = Auto.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    fixed = isinstance(getattr(model, "input_shapes", {}).get("input_ids", [0, "s"])[1], int)
    kwargs = {"padding": "max_length" if fixed else True, "truncation": True, "max_length": 16}
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", **kwargs)).logits
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    labels = [r["label"] for r in classify(texts, **kwargs)]
    print(json.dumps({"logits": logits.tolist(), "labels": labels}))
""")


def _side_venv(tool: str, folder: Path, texts: list[str]) -> dict:
    result = subprocess.run([str(OPTIMUM_PYTHON), "-c", SIDE, tool, str(folder)], input=json.dumps(texts),
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_optimum
@pytest.mark.parametrize("name", ["onnx", "onnx-int8", "static"])
def test_optimum_loads_onnx_exports(name, outputs):
    """ORTModelForSequenceClassification.from_pretrained(export dir) + pipeline: the project's
    logits (int8: same runtime, same batch) and its trained label names."""
    expected, labels, texts = _project(outputs[name])
    got = _side_venv("optimum", outputs[name], texts)
    assert np.abs(np.asarray(got["logits"]) - expected).max() <= 1e-4
    assert got["labels"] == labels and set(labels) <= set(LABELS)


@needs_optimum
def test_optimum_loads_a_deepsparse_export(outputs, tmp_path):
    """The DeepSparse export (fp32, fixed length 16) in Optimum, inputs padded to that length."""
    from distilprune.engine.deepsparse import export_for_deepsparse

    folder = tmp_path / "deepsparse"
    export_for_deepsparse(outputs["model"], folder, seq_len=16, parity_texts=SAMPLE_TEXTS[:2],
                          check_engine=False)
    expected, labels, texts = _project(outputs["onnx"])  # the dynamic-length fp32 export
    got = _side_venv("optimum", folder, texts)
    assert np.abs(np.asarray(got["logits"]) - expected).max() <= 1e-4 and got["labels"] == labels


@needs_optimum
def test_transformers_4_rebuilds_a_head_shrunk_model(outputs, tmp_path):
    """Transformers 5 dropped prune_heads; transformers 4 re-applies ``config.pruned_heads``."""
    import shutil

    from distilprune.export.onnx import portable_tokenizer_class

    assert json.loads((outputs["shrunk"] / "config.json").read_text())["pruned_heads"]
    expected, labels, texts = _project(outputs["shrunk"])
    shrunk = Path(shutil.copytree(outputs["shrunk"], tmp_path / "shrunk"))
    portable_tokenizer_class(shrunk)  # the tiny tokenizer's generic class (MiniLM's: BertTokenizer)
    got = _side_venv("transformers", shrunk, texts)
    assert np.abs(np.asarray(got["logits"]) - expected).max() <= 1e-4 and got["labels"] == labels


def test_predict_out_is_a_directory_or_a_named_file(outputs, tiny_csv, tmp_path, monkeypatch, capfd):
    from distilprune.jobs.inference import predict_file

    n, written = predict_file(outputs["model"], tiny_csv, tmp_path / "preds")
    assert written == tmp_path / "preds" / "predictions.csv"
    assert n == len(written.read_text().splitlines()) - 1
    n2, named = predict_file(outputs["model"], tiny_csv, tmp_path / "p.tsv")
    assert named == tmp_path / "p.tsv" and named.read_text().startswith("index\tprediction") and n2 == n
    with pytest.raises(UserError, match="already exists"):
        predict_file(outputs["model"], tiny_csv, tmp_path / "preds")
    with pytest.raises(UserError):  # a bad input leaves no empty directory behind
        predict_file(outputs["model"], tmp_path / "missing.csv", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
