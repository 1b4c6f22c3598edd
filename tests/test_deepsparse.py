"""DeepSparse engine: export layout, the one-line error without DeepSparse, logits parity with it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE_TEXTS

from distilprune.engine import deepsparse as ds
from distilprune.errors import UserError


def _no_deepsparse(monkeypatch, python_version=(3, 11)):
    def fail():
        raise ImportError("No module named 'deepsparse'")

    monkeypatch.setattr(ds, "_import_deepsparse", fail)
    monkeypatch.setattr(ds, "_python_version", lambda: python_version)
    monkeypatch.setattr(ds, "deepsparse_python", lambda: None)


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_factory):
    return tiny_model_factory("bert", num_layers=2)


def _torch_logits(model_dir, texts):
    from distilprune.export.onnx import input_names, load_for_export, torch_logits

    model, tokenizer = load_for_export(model_dir)
    return torch_logits(model, tokenizer, texts, input_names(model, tokenizer), 32, 32)


def test_unavailable_gives_one_line_user_error(monkeypatch, tiny_bert, tmp_path):
    _no_deepsparse(monkeypatch)
    ok, why = ds.deepsparse_available()
    assert not ok and "not importable" in why and "make deepsparse" in why
    with pytest.raises(UserError) as err:
        ds.require_deepsparse()
    assert "\n" not in str(err.value) and "make deepsparse" in str(err.value)

    # the export itself needs no DeepSparse (parity against onnxruntime only)
    meta = ds.export_for_deepsparse(tiny_bert, tmp_path / "ds", seq_len=32)
    assert meta["deepsparse"]["seq_len"] == 32 and meta["deepsparse"]["batch_size"] is None
    assert meta["parity"]["runtime"] == "onnxruntime" and "deepsparse" not in meta["parity"]
    assert meta["parity"]["max_abs_diff"] < 1e-4
    assert ds.is_deepsparse_export(tmp_path / "ds")
    assert {"model.onnx", "export.json", "parity.json", "tokenizer.json", "config.json"} <= {
        p.name for p in (tmp_path / "ds").iterdir()}
    with pytest.raises(UserError) as err:
        ds.DeepSparseRunner(tmp_path / "ds")
    message = str(err.value)
    assert "\n" not in message and "deepsparse is not importable" in message
    assert "make deepsparse" in message and "Python 3.11 only" in message


def test_wrong_python_is_reported(monkeypatch):
    _no_deepsparse(monkeypatch, python_version=(3, 12))
    ok, why = ds.deepsparse_available()
    assert not ok and "Python 3.12" in why and "needs 3.11" in why


def test_plain_onnx_export_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "export.json").write_text('{"format": "onnx"}')
    assert not ds.is_deepsparse_export(tmp_path)
    with pytest.raises(UserError, match="not a DeepSparse export"):
        ds.DeepSparseRunner(tmp_path)


@pytest.mark.skipif(not ds.deepsparse_available()[0], reason="DeepSparse is not installed")
def test_deepsparse_logits_match_pytorch(tiny_bert, tmp_path):
    reference = _torch_logits(tiny_bert, SAMPLE_TEXTS)
    ds.export_for_deepsparse(tiny_bert, tmp_path / "dyn", seq_len=32, check_engine=False)
    with ds.DeepSparseRunner(tmp_path / "dyn", threads=1) as runner:
        assert runner.kind == "deepsparse" and runner.max_length == 32
        logits = runner.predict_logits(SAMPLE_TEXTS, batch_size=3)  # 3+3+2: last chunk padded
        assert logits.shape == reference.shape
        assert np.abs(logits - reference).max() < 1e-3
        assert (logits.argmax(-1) == reference.argmax(-1)).all()
        batch = runner.encode(SAMPLE_TEXTS[:5], pad_to=32)
        assert batch["input_ids"].shape == (5, 32)
        assert np.abs(runner.run(batch) - reference[:5]).max() < 1e-3  # own batch-5 engine
        runner.set_threads(2)  # recompiles the engines of batch 3 and 5
        assert set(runner.info()["compile_s"]) == {"3", "5"}
        assert np.abs(runner.run(batch) - reference[:5]).max() < 1e-3
        with pytest.raises(UserError, match="sequence length 32"):
            runner.encode(SAMPLE_TEXTS[:2], pad_to=64)
        info = runner.info()
        assert info["params"] > 0 and info["nonzero_params"] <= info["params"]


@pytest.mark.skipif(not ds.deepsparse_available()[0], reason="DeepSparse is not installed")
def test_static_batch_export_pads_and_splits(tiny_bert, tmp_path):
    reference = _torch_logits(tiny_bert, SAMPLE_TEXTS)
    meta = ds.export_for_deepsparse(tiny_bert, tmp_path / "static", seq_len=32, batch_size=2)
    assert meta["deepsparse"]["batch_size"] == 2
    assert meta["parity"]["deepsparse"]["max_abs_diff"] < 1e-3  # the export ran DeepSparse too
    with ds.DeepSparseRunner(tmp_path / "static", threads=1) as runner:
        logits = runner.run(runner.encode(SAMPLE_TEXTS[:5]))  # 2 + 2 + 1 padded row
        assert np.abs(logits - reference[:5]).max() < 1e-3
        assert list(runner.info()["compile_s"]) == ["2"]
