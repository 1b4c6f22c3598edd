"""An ONNX export runs with onnxruntime + tokenizers + numpy alone (no torch, no transformers) and
reproduces the project's own predictions (#21)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from conftest import SAMPLE_TEXTS

# What a user without torch does: tokenizer.json as saved, model.onnx, labels from config.json.
STANDALONE = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any import of torch or transformers now fails
    sys.modules["transformers"] = None
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder, texts = sys.argv[1], json.loads(sys.stdin.read())
    tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
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


def _standalone(folder) -> dict:
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(folder)], input=json.dumps(TEXTS),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_torch_and_transformers_are_really_blocked(onnx_export):
    code = STANDALONE.split("import numpy")[0] + "import transformers\n"
    result = subprocess.run([sys.executable, "-c", code, str(onnx_export)], input="[]",
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_onnx_export_runs_without_torch(onnx_export, model):
    from distilprune.jobs.inference import SavedClassifier

    plain = _standalone(onnx_export)
    assert plain["banned"] == []
    logits = np.asarray(plain["logits"], dtype=np.float32)
    for reference in (SavedClassifier(onnx_export), SavedClassifier(model)):
        expected = reference.logits(TEXTS)
        assert plain["classes"] == expected.argmax(-1).tolist()  # 100 % agreement
        assert np.abs(logits - expected).max() <= 1e-4


def test_trained_label_names_reach_plain_onnxruntime(yes_no_model, tmp_path):
    from distilprune.export import export_onnx
    from distilprune.jobs.inference import SavedClassifier

    out = tmp_path / "onnx"
    export_onnx(yes_no_model, out, max_length=16, parity_texts=SAMPLE_TEXTS[:2])
    project = SavedClassifier(yes_no_model)
    expected = [project.label_names[i] for i in project.logits(TEXTS).argmax(-1)]
    assert set(project.label_names) == {"no", "yes"}
    assert _standalone(out)["labels"] == expected
