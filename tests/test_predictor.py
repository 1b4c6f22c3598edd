"""The one predictor behind evaluate, predict and serve: every runtime, one interface."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from distilprune.errors import UserError
from distilprune.predictor import load_predictor

TEXTS = ["forest fire near la ronge", "i love fruits", "#earthquake &amp; #fire @user http://t.co/x"]


def with_metadata(folder, tmp_path, **meta):
    """A copy of ``folder`` whose ``distilprune.json`` holds ``meta``."""
    out = shutil.copytree(folder, tmp_path / folder.name)
    (out / "distilprune.json").write_text(json.dumps(meta))
    return out


def test_torch_and_onnx_answer_alike(model, onnx_export):
    """Same labels, lengths and logits (to export precision) from the model and its ONNX export."""
    torch_model, onnx = load_predictor(model), load_predictor(onnx_export)
    assert (torch_model.backend, onnx.backend) == ("torch", "onnx")
    assert torch_model.labels == onnx.labels == ["0", "1"]  # transformers' LABEL_i never leaks out
    np.testing.assert_allclose(onnx.logits(TEXTS), torch_model.logits(TEXTS), atol=1e-4)
    assert onnx.lengths(TEXTS) == [min(n, onnx.max_length) for n in torch_model.lengths(TEXTS)]
    assert all(n > 2 for n in onnx.lengths(TEXTS))


def test_an_onnx_file_loads_like_its_folder(onnx_export):
    folder, file = load_predictor(onnx_export), load_predictor(onnx_export / "model.onnx")
    assert file.labels == folder.labels and file.max_length == folder.max_length
    np.testing.assert_array_equal(file(TEXTS), folder(TEXTS))


@pytest.mark.parametrize("which", ["model", "onnx_export"])
def test_training_preprocessing_applies_to_every_call(which, request, tmp_path):
    """``predictor(items)`` and ``predictor.logits(texts)`` both clean texts like the training data."""
    folder = request.getfixturevalue(which)
    cleaned = load_predictor(with_metadata(folder, tmp_path, preprocess=["html", "urls", "users"],
                                           label_names=["calm", "disaster"]))
    raw = load_predictor(folder)
    assert cleaned.labels == ["calm", "disaster"]
    assert cleaned.clean(TEXTS)[2] != TEXTS[2]
    np.testing.assert_allclose(cleaned(TEXTS), cleaned.logits(TEXTS), atol=1e-6)
    np.testing.assert_allclose(cleaned(TEXTS), raw(cleaned.clean(TEXTS)), atol=1e-6)
    assert np.abs(cleaned(TEXTS)[2] - raw(TEXTS)[2]).max() > 1e-6, "preprocessing changed nothing"


def test_pairs_are_cleaned_on_both_sides(model, tmp_path):
    pair = load_predictor(with_metadata(model, tmp_path, preprocess=["urls"], text_pairs=True))
    assert pair.pairs
    (first, second), = pair.clean([("a http://t.co/x", "b http://t.co/y")])
    assert "http" not in first and "http" not in second and first.startswith("a")
    with pytest.raises(UserError, match="trained on text pairs"):
        pair.logits(TEXTS)
    assert pair.logits(TEXTS, pairs=TEXTS).shape == (len(TEXTS), 2)
    with pytest.raises(UserError, match="trained on single texts"):
        load_predictor(model).logits(TEXTS, pairs=TEXTS)


def test_models_without_a_trained_head_are_refused(mlm_teacher, onnx_export, tmp_path):
    """A pretrained encoder or masked-LM would answer with a random head: refused, on every runtime."""
    with pytest.raises(UserError, match="is not a trained classifier"):
        load_predictor(mlm_teacher)
    headless = shutil.copytree(onnx_export, tmp_path / "headless")
    config = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(UserError, match="is not a trained classifier"):
        load_predictor(headless)


def test_bad_paths_and_engines_are_one_line_errors(onnx_export, tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_predictor(tmp_path / "missing")
    with pytest.raises(UserError, match="runs on onnxruntime"):
        load_predictor(onnx_export, engine="sparse")
    with pytest.raises(UserError, match="threads must be at least 1"):
        load_predictor(onnx_export, threads=0)


def test_an_onnx_export_runs_without_torch(onnx_export):
    code = ("import sys; from distilprune.predictor import load_predictor; "
            f"p = load_predictor({str(onnx_export)!r}, serving=True); p(['a fire']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
