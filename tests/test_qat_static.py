"""QAT keeps its learned int8 scales; export --quantization qat-static turns them into QDQ ONNX."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SAMPLE_TEXTS, assert_user_error, run_cli
from onnx import numpy_helper

from distilprune.errors import UserError
from distilprune.export import OnnxClassifier, export_onnx
from distilprune.export import onnx as onnx_export
from distilprune.quantize import (
    QATConfig,
    QATHook,
    attach_input_quant,
    load_qat_params,
    save_qat_params,
)
from distilprune.quantize.qat import QPARAMS_FILENAME

TEXTS = [f"{text} {suffix}" for suffix in ("", "now", "again!") for text in SAMPLE_TEXTS]


def _csv(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "target"])
        for i in range(48):
            text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
            label = int(any(w in text.lower() for w in ("fire", "earthquake", "evacuation", "shelter")))
            writer.writerow([i, f"{text} #{i}", label])
    return path


def _qat_finetune(model: Path, data: Path, out: Path, cfg: QATConfig) -> dict:
    from distilprune.jobs.common import DataConfig
    from distilprune.jobs.finetune import FinetuneConfig, finetune
    from distilprune.train import TrainConfig

    return finetune(FinetuneConfig(
        model=str(model), out=str(out), data=DataConfig(train=str(data), max_length=32), qat=cfg,
        train=TrainConfig(max_steps=6, batch_size=8, lr=1e-3, eval_every=3, patience=None)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _csv(tmp_path_factory.mktemp("qat-data") / "train.csv")


@pytest.fixture(scope="module", params=["uint8-affine", "int8-symmetric"])
def qat_dir(request, tiny_model_factory, data, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny BERT after 6 QAT steps (``finetune --qat``), with its summary."""
    cfg = (QATConfig() if request.param == "uint8-affine"
           else QATConfig(activation_dtype="int8", activation_symmetric=True))
    out = tmp_path_factory.mktemp(f"qat-{request.param}") / "qat"
    return out, _qat_finetune(tiny_model_factory("bert", 2), data, out, cfg)


@pytest.fixture(scope="module")
def qat_export(qat_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("qat-static") / "onnx"
    return out, export_onnx(qat_dir[0], out, quantization="qat-static", max_length=32,
                            parity_texts=TEXTS)


def _initializers(path: Path) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    graph = onnx.load(str(path / "model.onnx")).graph
    return graph, {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _torch_fake_quant_logits(qat_path: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(qat_path).eval()
    model = attach_input_quant(model, load_qat_params(qat_path))
    enc = AutoTokenizer.from_pretrained(qat_path)(texts, padding=True, truncation=True,
                                                  max_length=32, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


def _observed_and_finalized(path: Path) -> dict[str, dict]:
    """QAT-prepare the saved model, let its observers see a batch, then finalize: the scales."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path)
    hook = QATHook(QATConfig())
    hook.on_train_begin(model, total_steps=1)
    enc = AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")
    model.train()(**enc)
    hook.on_train_end(model)
    return hook.scales


def test_learned_scales_round_trip(tiny_model_factory, tmp_path):
    scales = _observed_and_finalized(tiny_model_factory("bert", 2))
    save_qat_params(tmp_path, scales)
    loaded = load_qat_params(tmp_path)
    assert list(loaded) == list(scales)
    for name, info in scales.items():
        assert torch.equal(loaded[name]["weight_scale"], info["weight_scale"].float())
        assert loaded[name]["input_scale"] == np.float32(info["input_scale"])  # float32 on disk
        assert loaded[name]["input_zero_point"] == info["input_zero_point"]
        assert loaded[name]["input_dtype"] == info["input_dtype"] == "uint8"
    assert load_qat_params(tmp_path / "elsewhere") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [QPARAMS_FILENAME]  # no temporary left


def test_finetune_qat_keeps_scales_and_fake_quant_metrics(qat_dir):
    path, summary = qat_dir
    params = load_qat_params(path)
    assert params and all(info["input_scale"] > 0 for info in params.values())
    assert summary["qat"]["qparams"] == QPARAMS_FILENAME
    assert summary["qat"]["quantized_inputs"] == len(params) == 12  # 2 layers x 6 Linears
    assert set(summary["qat"]["fake_quant_metrics"]) >= {"accuracy", "f1"}
    saved = json.loads((path / "distilprune.json").read_text())
    assert saved["qat"]["activation_dtype"] == next(iter(params.values()))["input_dtype"]


def test_quantize_linear_scales_are_the_learned_ones(qat_dir, qat_export):
    params = load_qat_params(qat_dir[0])
    out, result = qat_export
    graph, inits = _initializers(out)
    quant = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    learned = sorted((info["input_scale"], info["input_zero_point"]) for info in params.values())
    exported = sorted((float(inits[n.input[1]]), int(inits[n.input[2]])) for n in quant)
    assert exported == learned  # bit-exact: float32 learned scale == float32 initializer
    dtype = {"uint8": np.uint8, "int8": np.int8}[next(iter(params.values()))["input_dtype"]]
    assert all(inits[n.input[2]].dtype == dtype for n in quant)
    weight_scales = [inits[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert sorted(map(tuple, weight_scales)) == sorted(
        tuple(info["weight_scale"].numpy()) for info in params.values())
    assert result["quantization"]["method"] == "qat-static"
    assert result["quantization"]["weight_grid_max_error"] == 0.0  # the saved weights are on the grid
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1].endswith("weight_dq")]
    assert len(matmuls) == len(params)
    assert not _fp32_copies(qat_dir[0], params, inits)  # the fp32 weights are gone


def _fp32_copies(qat_path: Path, params: dict, inits: dict[str, np.ndarray]) -> list[str]:
    from safetensors.numpy import load_file

    weights = load_file(qat_path / "model.safetensors")
    linears = [weights[f"{name}.weight"] for name in params]
    return [name for name, array in inits.items() if array.dtype == np.float32 and array.ndim == 2
            and any(np.array_equal(array, w.T) or np.array_equal(array, w) for w in linears)]


def test_parity_with_the_fake_quantized_model(qat_dir, qat_export):
    out, result = qat_export
    meta = json.loads((out / "export.json").read_text())
    parity = meta["quantization"]["parity"]
    assert parity == result["parity"] == json.loads((out / "parity.json").read_text())
    assert parity["n_texts"] == len(TEXTS) and parity["agreement"] == 1.0
    assert parity["max_abs_diff"] < onnx_export.QAT_STATIC_TOLERANCE * max(1, parity["max_abs_logit"])
    ours = OnnxClassifier(out).predict_logits(TEXTS[:8], batch_size=8)
    np.testing.assert_allclose(ours, _torch_fake_quant_logits(qat_dir[0], TEXTS[:8]), atol=2e-2)


def test_word_embeddings_are_int8_rows_unless_asked_not_to(qat_dir, qat_export, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out, result = qat_export
    table = AutoModelForSequenceClassification.from_pretrained(qat_dir[0]).get_input_embeddings().weight
    _, inits = _initializers(out)
    assert inits["word_embeddings.quantized"].dtype == np.int8
    assert inits["word_embeddings.quantized"].shape == tuple(table.shape)
    assert not any(a.shape == tuple(table.shape) and a.dtype == np.float32 for a in inits.values())
    assert result["quantization"]["embeddings"].startswith("int8")
    plain = export_onnx(qat_dir[0], tmp_path / "fp32-emb", quantization="qat-static", max_length=32,
                        parity_texts=TEXTS, quantize_embeddings=False)
    assert plain["quantization"]["embeddings"] == "fp32"
    assert plain["size_bytes"] > result["size_bytes"]
    assert plain["parity"]["agreement"] == 1.0


def test_static_int8_does_not_depend_on_batch_mates(qat_export):
    classifier = OnnxClassifier(qat_export[0])
    batched = classifier.predict_logits(TEXTS, batch_size=len(TEXTS))
    alone = np.concatenate([classifier.predict_logits([t]) for t in TEXTS])
    np.testing.assert_allclose(alone, batched, atol=1e-4)


def test_refuses_a_model_without_learned_scales(tiny_model_factory, tmp_path):
    with pytest.raises(UserError, match="no learned QAT scales"):
        export_onnx(tiny_model_factory("bert", 2), tmp_path / "out", quantization="qat-static")
    assert list(tmp_path.iterdir()) == []


def test_cli_refusals_are_one_line(monkeypatch, capfd, tiny_model_factory, qat_dir, tmp_path):
    plain = tiny_model_factory("bert", 2)
    assert_user_error(monkeypatch, capfd, tmp_path, ["export", "--model", plain, "--out",
                      tmp_path / "o", "--quantization", "qat-static"], "no learned QAT scales")
    assert_user_error(monkeypatch, capfd, tmp_path, ["export", "--model", qat_dir[0], "--out",
                      tmp_path / "o", "--quantization", "static"], "quantization must be one of")
    assert_user_error(monkeypatch, capfd, tmp_path, ["export", "--model", qat_dir[0], "--out",
                      tmp_path / "o", "--format", "compact", "--quantization", "qat-static"],
                      "applies to --format onnx")


def test_corrupt_scales_file_is_one_line(tmp_path):
    (tmp_path / QPARAMS_FILENAME).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="is corrupt"):
        load_qat_params(tmp_path)


def test_bad_parity_is_refused_and_leaves_nothing(qat_dir, tmp_path, monkeypatch):
    real = onnx_export.torch_logits
    monkeypatch.setattr(onnx_export, "torch_logits", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.raises(UserError, match="does not match the fake-quantized"):
        export_onnx(qat_dir[0], tmp_path / "out", quantization="qat-static", parity_texts=TEXTS)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_then_evaluate_and_predict(monkeypatch, capfd, qat_dir, data, tmp_path):
    out = tmp_path / "onnx"
    code, stdout, err = run_cli(monkeypatch, capfd, "export", "--model", qat_dir[0], "--out", out,
                                "--quantization", "qat-static", "--data", data, "--max-length", "32")
    assert code == 0, err
    assert "int8 (qat-static)" in stdout
    card = (out / "README.md").read_text()
    assert "qat-static" in card
    code, stdout, err = run_cli(monkeypatch, capfd, "evaluate", "--model", out, "--data", data)
    assert code == 0, err
    assert "accuracy" in stdout.lower()
    code, _, err = run_cli(monkeypatch, capfd, "predict", "--model", out, "--text", SAMPLE_TEXTS[0])
    assert code == 0, err
