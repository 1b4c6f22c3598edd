"""An ONNX export runs with onnxruntime + tokenizers + numpy alone (no torch, no transformers) and
reproduces the project's own predictions (#21)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SAMPLE_TEXTS

# What a user without torch does: tokenizer.json as saved, model.onnx, labels from config.json.
STANDALONE = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any import of torch or transformers now fails
    sys.modules["transformers"] = None
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder, max_length, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    static = session.get_inputs()[0].shape[1]  # a DeepSparse export has a fixed length
    static = static if isinstance(static, int) else None
    pad = json.load(open(f"{folder}/tokenizer_config.json")).get("pad_token", "[PAD]")
    tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
    tokenizer.enable_truncation(static or max_length)  # the length the model card gives
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad, length=static)
    encodings = tokenizer.encode_batch(texts)
    columns = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    feed = {i.name: np.array([getattr(e, columns[i.name]) for e in encodings], dtype=np.int64)
            for i in session.get_inputs()}
    logits = session.run(None, feed)[0]
    id2label = json.load(open(f"{folder}/config.json"))["id2label"]
    labels = [id2label[str(int(i))] for i in logits.argmax(-1)]  # the config's names: no KeyError
    banned = [m for m in ("torch", "transformers") if sys.modules.get(m) is not None]
    print(json.dumps({"logits": logits.tolist(), "labels": labels, "banned": banned,
                      "classes": logits.argmax(-1).tolist()}))
""")

# Short, long (beyond the export's 16 tokens) and mixed-length texts in one batch.
TEXTS = [*SAMPLE_TEXTS[:4], " ".join(SAMPLE_TEXTS), "fire", ""]


def _standalone(folder, max_length: int = 128) -> dict:
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(folder), str(max_length)],
                            input=json.dumps(TEXTS),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_torch_and_transformers_are_really_blocked(onnx_export):
    code = STANDALONE.split("import numpy")[0] + "import transformers\n"
    result = subprocess.run([sys.executable, "-c", code, str(onnx_export), "16"], input="[]",
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_onnx_export_runs_without_torch(onnx_export, model):
    from distilprune.predictor import load_predictor

    plain = _standalone(onnx_export, load_predictor(onnx_export).max_length)
    assert plain["banned"] == []
    logits = np.asarray(plain["logits"], dtype=np.float32)
    for reference in (load_predictor(onnx_export), load_predictor(model)):
        expected = reference.logits(TEXTS)
        assert plain["classes"] == expected.argmax(-1).tolist()  # 100 % agreement
        assert np.abs(logits - expected).max() <= 1e-4


def test_trained_label_names_reach_plain_onnxruntime(yes_no_model, tmp_path):
    from distilprune.export import export_onnx
    from distilprune.predictor import load_predictor

    out = tmp_path / "onnx"
    export_onnx(yes_no_model, out, max_length=16, parity_texts=SAMPLE_TEXTS[:2])
    project = load_predictor(yes_no_model)
    expected = [project.labels[i] for i in project.logits(TEXTS).argmax(-1)]
    assert set(project.labels) == {"no", "yes"}
    assert _standalone(out)["labels"] == expected


@pytest.fixture(scope="module")
def onnx_kinds(onnx_export, model, tmp_path_factory) -> dict:
    """The other ONNX outputs of the tiny model: dynamic int8 (``export --int8``), static int8
    (``quantize``) and the DeepSparse export (fixed sequence length)."""
    from distilprune.engine.deepsparse import export_for_deepsparse
    from distilprune.export import export_onnx
    from distilprune.export.onnx import static_quantize_export

    root = tmp_path_factory.mktemp("onnx-kinds")
    export_onnx(model, root / "int8", max_length=16, int8=True, parity_texts=SAMPLE_TEXTS[:2])
    static_quantize_export(onnx_export, root / "static", SAMPLE_TEXTS, max_length=16)
    export_for_deepsparse(model, root / "deepsparse", seq_len=16, parity_texts=SAMPLE_TEXTS[:2],
                          check_engine=False)
    return {"int8": root / "int8", "static": root / "static", "deepsparse": root / "deepsparse"}


@pytest.mark.parametrize("kind", ["int8", "static"])
def test_int8_exports_run_without_torch(kind, onnx_kinds):
    """Plain onnxruntime gives the project's own answers for an int8 export (target >= 99.5 %)."""
    from distilprune.predictor import load_predictor

    project = load_predictor(onnx_kinds[kind])
    plain = _standalone(onnx_kinds[kind], project.max_length)
    expected = project.logits(TEXTS)
    assert plain["banned"] == [] and plain["classes"] == expected.argmax(-1).tolist()
    assert np.abs(np.asarray(plain["logits"]) - expected).max() <= 1e-4  # same runtime, same batch


def test_deepsparse_export_runs_on_plain_onnxruntime(onnx_kinds, onnx_export):
    """Its fixed length is read from the graph; padded to it, the fp32 logits are those of the
    dynamic-length export cutting texts at the same length."""
    from distilprune.export.runtime import OnnxClassifier

    plain = _standalone(onnx_kinds["deepsparse"])
    expected = OnnxClassifier(onnx_export, max_length=16).predict_logits(TEXTS)
    assert plain["banned"] == [] and plain["classes"] == expected.argmax(-1).tolist()
    assert np.abs(np.asarray(plain["logits"]) - expected).max() <= 1e-4


def test_deepsparse_export_has_a_model_card(onnx_kinds):
    from huggingface_hub import ModelCard

    meta = ModelCard.load(onnx_kinds["deepsparse"] / "README.md").data.to_dict()
    assert meta["distilprune"]["format"] == "deepsparse"
