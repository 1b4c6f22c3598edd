"""Which standard tools load each kind of output distilprune writes, and with what logits (#21).

One real fine-tuned model (MiniLM-L6 on the disaster tweets, ``benchmarks/work/prune609/dense``)
is turned into every kind of output by short CLI jobs (a few steps each) in
``benchmarks/work/interop/`` (reused when rerun). Each output is then loaded by every standard tool
that applies to its kind:

* ``transformers``: ``AutoModelForSequenceClassification.from_pretrained`` + ``pipeline(
  "text-classification")`` (label names checked); masked-LMs ``AutoModelForMaskedLM`` + ``pipeline(
  "fill-mask")``; a shrunk model (``config.pruned_heads``) with transformers 4.57 in the Optimum venv,
  since transformers 5 dropped head pruning;
* ``onnxruntime+tokenizers``: in a subprocess where torch and transformers cannot be imported;
* ``optimum``: ``ORTModelForSequenceClassification`` + ``pipeline`` in ``benchmarks/work/optimum-venv``
  (``make optimum``: transformers 4.57 + optimum-onnx 0.1.0; Optimum has no transformers-5 release);
* ``ModelCard.load`` (huggingface_hub);

and its logits on held-out tweets (the dense model's validation split) are compared with the
project's own predictor (``load_predictor``: what evaluate / predict / serve run). Targets:
max |Δlogit| <= 1e-4 for fp32 outputs, argmax agreement >= 99.5 % for int8 ones. A tool that cannot
load a kind by design is recorded as ``n/a`` with the reason. Writes ``results/interop.{json,md}``;
``summary.qat_static_accuracy`` / ``best_ptq_accuracy`` are read from ``results/qat.json``
(``benchmarks/qat.py``) when it exists.

    make optimum   # once: the Optimum side venv
    nice -n 19 .venv/bin/python benchmarks/interop.py [--texts 300] [--threads 1]
    .venv/bin/python benchmarks/interop.py --refresh-summary   # after benchmarks/qat.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import DISASTER_TRAIN, RESULTS, ROOT, WORK, require_data, run_main, write_results

from distilprune.reporting.formatting import markdown_table

DENSE = WORK / "prune609" / "dense"
OPTIMUM_VENV = WORK / "optimum-venv"
TOOLS = ("transformers", "onnxruntime+tokenizers", "optimum", "ModelCard.load")
FP32_TARGET, INT8_TARGET = 1e-4, 0.995
TRAIN = ["--data", str(DISASTER_TRAIN), "--max-steps", "6", "--batch-size", "16", "--lr", "1e-5",
         "--max-length", "96"]
MLM = ["--corpus", str(DISASTER_TRAIN), "--corpus-limit", "400", "--max-steps", "4",
       "--batch-size", "16", "--max-length", "64"]
MASKED = ["Forest [MASK] near La Ronge Sask. Canada", "The [MASK] destroyed half of the town",
          "Residents were told to [MASK] immediately", "I love [MASK] and the summer"]


@dataclass(frozen=True)
class Output:
    """One output of the CLI: ``distilprune ARGS --out work/NAME`` (``{x}``: work/x)."""

    name: str
    args: tuple[str, ...]
    int8: bool = False  # computes in int8 (target: agreement), else fp32 (target: |Δlogit|)


OUTPUTS = (
    Output("finetune", ("finetune", "--model", "{dense}", *TRAIN)),
    Output("distilled", ("finetune", "--model", "{dense}", "--teacher", "{dense}", *TRAIN)),
    Output("qat", ("finetune", "--model", "{dense}", "--qat", *TRAIN)),
    Output("pruned", ("finetune", "--model", "{dense}", "--prune", "unstructured", "--final-sparsity",
                      "0.5", "--prune-end", "0.5", "--prune-every", "1", *TRAIN)),
    Output("structured", ("finetune", "--model", "{dense}", "--prune", "structured", "--prune-heads",
                          "0.25", "--prune-neurons", "0.5", "--prune-end", "0.5", "--prune-every", "1",
                          *TRAIN)),
    Output("student", ("student", "--model", "{dense}", "--layers", "3")),
    Output("mlm-head", ("fit-mlm-head", "--model", "{dense}", *MLM)),
    Output("mlm-distilled", ("distill-mlm", "--teacher", "{mlm-head}", "--layers", "3", "--prune",
                             "unstructured", "--final-sparsity", "0.5", "--prune-every", "1", *MLM)),
    Output("shrunk", ("shrink", "--model", "{finetune}", "--heads", "0.25", "--neurons", "0.5")),
    Output("onnx", ("export", "--model", "{finetune}", "--max-length", "96")),
    Output("onnx-int8", ("export", "--model", "{finetune}", "--int8", "--max-length", "96"), True),
    Output("onnx-static-int8", ("quantize", "--model", "{onnx}", "--data", str(DISASTER_TRAIN),
                                "--limit", "200", "--max-length", "96"), True),
    Output("qat-onnx-int8", ("export", "--model", "{qat}", "--int8", "--max-length", "96"), True),
    Output("qat-static-int8", ("export", "--model", "{qat}", "--quantization", "qat-static",
                               "--max-length", "96"), True),
    Output("deepsparse", ("export", "--model", "{pruned}", "--format", "deepsparse",
                          "--max-length", "96")),
    Output("compact", ("export", "--model", "{pruned}", "--format", "compact")),
    Output("compact-int8", ("export", "--model", "{pruned}", "--format", "compact", "--int8"), True),
    Output("sparse-engine", ("export", "--model", "{pruned}", "--format", "sparse", "--max-length",
                             "96"), True),
)
NOT_ONNX = "no model.onnx (PyTorch weights): `distilprune export` makes one"
NOT_TORCH = "an ONNX graph, no PyTorch weights: Optimum's ORTModel is the transformers-style loader"
OWN_LAYOUT = {
    "compact": "distilprune's own bitmask + values safetensors layout (model.compact.safetensors; "
               "safetensors reads the tensors, only distilprune expands them into a model)",
    "sparse": "packed 1x4 int8 blocks for distilprune's own kernels (model.sparse.safetensors)",
}


# ----------------------------------------------------------------------------- outputs
def cli(args: list[str], threads: int) -> str | None:
    """``distilprune ARGS`` in a child process at the lowest priority; its error line, if any."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    command = ["nice", "-n", "19", sys.executable, "-m", "distilprune.cli", *args]
    print("$ distilprune", " ".join(args), flush=True)
    result = subprocess.run(command, cwd=ROOT, env=env, check=False, stderr=subprocess.PIPE, text=True)
    lines = result.stderr.strip().splitlines()
    return None if result.returncode == 0 else (lines[-1] if lines else f"exit {result.returncode}")


def make_outputs(work: Path, dense: Path, threads: int) -> tuple[dict[str, Path], dict[str, str]]:
    """Every output in ``work`` (made when missing; the CLI writes each one atomically) and the
    error of each CLI job that failed."""
    paths = {"dense": dense, **{o.name: work / o.name for o in OUTPUTS}}
    errors = {}
    for output in OUTPUTS:
        if paths[output.name].is_dir():
            continue
        start = time.perf_counter()
        args = [a.format_map({k: str(v) for k, v in paths.items()}) for a in output.args]
        if error := cli([*args, "--out", str(paths[output.name])], threads):
            errors[output.name] = error
            print(f"[stage] {output.name} FAILED: {error}", flush=True)
            continue
        print(f"[stage] {output.name} done in {time.perf_counter() - start:.0f}s", flush=True)
    return {o.name: paths[o.name] for o in OUTPUTS}, errors


def heldout_tweets(dense: Path, n: int) -> list[str]:
    """The first ``n`` tweets of the dense model's validation split (never trained on)."""
    val_ids = json.loads((dense / "split.json").read_text())["val_ids"]
    with DISASTER_TRAIN.open(newline="", encoding="utf-8") as handle:
        by_id = {row["id"]: row["text"] for row in csv.DictReader(handle)}
    return [by_id[i] for i in val_ids[:n]]


def for_tools(folder: Path, texts: list[str]) -> list[str]:
    """``texts`` with the directory's training preprocessing applied (as its model card says a
    user of a standard tool must do)."""
    from distilprune.data.preprocess import build_preprocessor
    from distilprune.jobs.common import read_metadata

    steps = read_metadata(folder).get("preprocess") or []
    if not steps:
        return texts
    fn = build_preprocessor(steps)
    return [fn(t, {}) for t in texts]


# ----------------------------------------------------------------------------- the tools
STANDALONE = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any import of torch or transformers now fails
    sys.modules["transformers"] = None
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    req = json.loads(sys.stdin.read())
    folder, texts, max_length = req["path"], req["texts"], req["max_length"]
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    static = session.get_inputs()[0].shape[1]  # a DeepSparse export has a fixed length
    static = static if isinstance(static, int) else None
    pad = json.load(open(f"{folder}/tokenizer_config.json")).get("pad_token", "[PAD]")
    tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
    tokenizer.enable_truncation(static or max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad, length=static)
    columns = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    parts = []
    for i in range(0, len(texts), 32):
        encodings = tokenizer.encode_batch(texts[i:i + 32])
        feed = {x.name: np.array([getattr(e, columns[x.name]) for e in encodings], dtype=np.int64)
                for x in session.get_inputs()}
        parts.append(session.run(None, feed)[0])
    logits = np.concatenate(parts)
    id2label = json.load(open(f"{folder}/config.json"))["id2label"]
    print(json.dumps({"logits": logits.tolist(), "labels": [id2label[str(int(k))] for k in logits.argmax(-1)],
                      "torch_imported": any(sys.modules.get(m) for m in ("torch", "transformers"))}))
""")

# Runs in the Optimum venv (transformers 4.57): ORTModel, or plain transformers for shrunk models.
SIDE_VENV = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    import transformers
    from transformers import AutoTokenizer, pipeline

    req = json.loads(sys.stdin.read())
    folder, texts, max_length = req["path"], req["texts"], req["max_length"]
    if req["tool"] == "optimum":
        import optimum.onnxruntime
        from importlib.metadata import version
        model = optimum.onnxruntime.ORTModelForSequenceClassification.from_pretrained(folder)
        static = model.input_shapes["input_ids"][1]
        static = static if isinstance(static, int) else None
        runtime = f"optimum-onnx {version('optimum-onnx')}, transformers {transformers.__version__}"
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
        static, runtime = None, f"transformers {transformers.__version__}"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kwargs = {"truncation": True, "max_length": static or max_length,
              "padding": "max_length" if static else True}
    parts = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            parts.append(model(**tokenizer(texts[i:i + 32], return_tensors="pt", **kwargs)).logits.numpy())
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    labels = [r["label"] for r in classify(texts, batch_size=32, **kwargs)]
    print(json.dumps({"logits": np.concatenate(parts).tolist(), "labels": labels, "runtime": runtime}))
""")


def _subprocess(python: Path | str, script: str, request: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(["nice", "-n", "19", str(python), "-c", script], input=json.dumps(request),
                            capture_output=True, text=True, timeout=1800, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def standalone_onnxruntime(folder: Path, texts: list[str], max_length: int, threads: int) -> dict[str, Any]:
    """onnxruntime + tokenizers + numpy alone (torch and transformers blocked)."""
    out = _subprocess(sys.executable, STANDALONE, {"path": str(folder), "texts": texts,
                                                   "max_length": max_length}, threads)
    if out.pop("torch_imported"):
        raise RuntimeError("torch or transformers was imported")
    import onnxruntime
    import tokenizers

    return {**out, "runtime": f"onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}"}


def side_venv(tool: str, folder: Path, texts: list[str], max_length: int, threads: int) -> dict[str, Any]:
    """``optimum`` or ``transformers`` (4.57) in the Optimum venv."""
    python = OPTIMUM_VENV / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(f"{OPTIMUM_VENV} missing: run `make optimum`")
    return _subprocess(python, SIDE_VENV, {"path": str(folder), "texts": texts, "tool": tool,
                                           "max_length": max_length}, threads)


def transformers_classifier(folder: Path, texts: list[str], max_length: int) -> dict[str, Any]:
    """``from_pretrained`` logits and ``pipeline("text-classification")`` labels, in-process."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    kwargs = {"truncation": True, "max_length": max_length, "padding": True}
    with torch.inference_mode():
        logits = [model(**tokenizer(texts[i:i + 32], return_tensors="pt", **kwargs)).logits.numpy()
                  for i in range(0, len(texts), 32)]
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    labels = [r["label"] for r in classify(texts, batch_size=32, **kwargs)]
    return {"logits": np.concatenate(logits).tolist(), "labels": labels,
            "runtime": f"transformers {transformers.__version__}"}


def mask_logits(model: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Vocabulary logits at each text's ``[MASK]``, one row per text."""
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits
    return logits[enc["input_ids"] == tokenizer.mask_token_id].float().numpy()


def transformers_masked_lm(folder: Path) -> dict[str, Any]:
    """``AutoModelForMaskedLM`` logits at the masks and ``pipeline("fill-mask")`` answers."""
    import transformers
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    fill = pipeline("fill-mask", model=str(folder), device="cpu")
    tokens = [answers[0]["token_str"] for answers in fill(MASKED)]
    return {"logits": mask_logits(model, tokenizer, MASKED).tolist(), "labels": tokens,
            "runtime": f"transformers {transformers.__version__}"}


def model_card(folder: Path, kind: str) -> dict[str, Any]:
    """``ModelCard.load``: the YAML names this directory's format and task."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    meta = ModelCard.load(folder / "README.md").data.to_dict()
    dp = meta.get("distilprune") or {}
    if dp.get("format") != kind:
        raise RuntimeError(f"card says format {dp.get('format')!r}, directory is {kind!r}")
    return {"runtime": f"huggingface_hub {huggingface_hub.__version__}",
            "pipeline_tag": meta.get("pipeline_tag"), "quantization": dp.get("quantization"),
            "labels": dp.get("labels")}


# ----------------------------------------------------------------------------- per output
def is_masked_lm(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text())
    return any("MaskedLM" in a for a in config.get("architectures") or [])


def tool_plan(kind: str, masked: bool) -> dict[str, str | None]:
    """Tool -> ``None`` (applies) or why it does not apply to ``kind`` (by design)."""
    onnx = kind in ("onnx", "deepsparse")
    plan: dict[str, str | None] = {
        "transformers": NOT_TORCH if onnx else OWN_LAYOUT.get(kind),
        "onnxruntime+tokenizers": None if onnx else NOT_ONNX,
        "optimum": None if onnx else NOT_ONNX,
        "ModelCard.load": None,
    }
    if masked:
        plan["optimum"] = plan["onnxruntime+tokenizers"] = (
            "a masked-LM (pre-training output): `export` takes classifiers only")
    return plan


def own_predictions(folder: Path, texts: list[str], masked: bool) -> tuple[np.ndarray, list[str]]:
    """The project's own logits and labels: ``load_predictor`` (masked-LMs: ``load_masked_lm``)."""
    if masked:
        from distilprune.models.loading import load_masked_lm, load_tokenizer

        tokenizer = load_tokenizer(folder)
        logits = mask_logits(load_masked_lm(folder)[0].eval(), tokenizer, MASKED)
        return logits, [tokenizer.decode([i]).strip() for i in logits.argmax(-1)]
    from distilprune.predictor import load_predictor

    clf = load_predictor(folder)
    logits = clf.logits(texts)
    return logits, [clf.labels[i] for i in logits.argmax(-1)]


def run_tool(tool: str, folder: Path, kind: str, masked: bool, texts: list[str], max_length: int,
             threads: int) -> dict[str, Any]:
    if tool == "ModelCard.load":
        return model_card(folder, kind)
    if tool == "onnxruntime+tokenizers":
        return standalone_onnxruntime(folder, texts, max_length, threads)
    if tool == "optimum":
        return side_venv("optimum", folder, texts, max_length, threads)
    if masked:
        return transformers_masked_lm(folder)
    if kind == "shrunk":  # transformers 5 dropped prune_heads; 4.x re-applies config.pruned_heads
        return side_venv("transformers", folder, texts, max_length, threads)
    return transformers_classifier(folder, texts, max_length)


def check_tool(tool: str, folder: Path, kind: str, masked: bool, texts: list[str], own: np.ndarray,
               own_labels: list[str], int8: bool, threads: int) -> dict[str, Any]:
    """Load ``folder`` with ``tool``; its logits and labels against the project's own."""
    from distilprune.jobs.common import read_metadata

    max_length = int(read_metadata(folder).get("max_length") or 128)
    start = time.perf_counter()
    try:
        out = run_tool(tool, folder, kind, masked, for_tools(folder, texts), max_length, threads)
    except Exception as exc:  # any failure of a foreign tool is a result, not a crash
        print(f"  {tool}: FAILED {exc}", flush=True)
        return {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    result = {"status": "ok", "seconds": round(time.perf_counter() - start, 1),
              **{k: v for k, v in out.items() if k not in ("logits", "labels")}}
    if "logits" in out:
        logits = np.asarray(out["logits"], dtype=np.float64)
        diff = np.abs(logits - own)
        result |= {"n": len(logits), "max_abs_diff": float(diff.max()),
                   "agreement": float((logits.argmax(-1) == own.argmax(-1)).mean()),
                   "label_agreement": float(np.mean([a == b for a, b in zip(out["labels"], own_labels,
                                                                              strict=True)]))}
        result["meets_target"] = (result["agreement"] >= INT8_TARGET if int8
                                  else result["max_abs_diff"] <= FP32_TARGET)
    print(f"  {tool}: ok {_brief(result)}", flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    if "max_abs_diff" not in result:
        return ""
    return f"max|Δ| {result['max_abs_diff']:.2e} agreement {result['agreement']:.4f}"


def source_of(output: Output) -> str | None:
    """The output a conversion (export, quantize, shrink) was made from; None for training jobs."""
    if output.args[0] not in ("export", "quantize", "shrink"):
        return None
    return output.args[output.args.index("--model") + 1].strip("{}")


def versus_source(output: Output, own: np.ndarray, paths: dict[str, Path], texts: list[str],
                  cache: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """What the conversion costs: the project's predictor on the output vs on its source."""
    source = source_of(output)
    if source is None:
        return None
    if source not in cache:
        cache[source] = own_predictions(paths[source], texts, False)[0]
    diff = np.abs(cache[source] - own)
    return {"source": source, "max_abs_diff": float(diff.max()),
            "agreement": float((cache[source].argmax(-1) == own.argmax(-1)).mean())}


def check_output(output: Output, paths: dict[str, Path], texts: list[str], threads: int,
                 cache: dict[str, np.ndarray]) -> dict[str, Any]:
    from distilprune.formats import model_kind

    folder = paths[output.name]
    kind, masked = model_kind(folder), is_masked_lm(folder)
    print(f"{output.name} ({kind}{', masked-LM' if masked else ''})", flush=True)
    own, own_labels = own_predictions(folder, texts, masked)
    tools = {}
    for tool, why in tool_plan(kind, masked).items():
        tools[tool] = ({"status": "n/a", "why": why} if why else
                       check_tool(tool, folder, kind, masked, texts, own, own_labels, output.int8, threads))
    applicable = [t for t in tools.values() if t["status"] != "n/a"]
    return {
        "name": output.name, "command": "distilprune " + " ".join(output.args), "kind": kind,
        "task": "fill-mask" if masked else "text-classification",
        "precision": "int8" if output.int8 else "fp32",
        "target": f"agreement >= {INT8_TARGET}" if output.int8 else f"max |Δlogit| <= {FP32_TARGET:g}",
        "tools": tools,
        "loadable_everywhere": all(t["status"] == "ok" for t in applicable),
        "within_target": all(t.get("meets_target", True) for t in applicable),
        "vs_source": versus_source(output, own, paths, texts, cache),
    }


def not_made(output: Output, error: str) -> dict[str, Any]:
    """The row of an output whose CLI job failed: no tool was tried, it counts as not loadable."""
    return {"name": output.name, "command": "distilprune " + " ".join(output.args), "kind": None,
            "error": error, "tools": {t: {"status": "failed", "error": f"not made: {error}"} for t in TOOLS},
            "loadable_everywhere": False, "within_target": False}


# ----------------------------------------------------------------------------- summary + report
def qat_numbers() -> dict[str, Any]:
    """``qat_static_accuracy`` and ``best_ptq_accuracy`` from ``results/qat.json``, if written."""
    path = RESULTS / "qat.json"
    if not path.is_file():
        return {"qat_static_accuracy": None, "best_ptq_accuracy": None,
                "qat_note": "results/qat.json absent: run benchmarks/qat.py, then this script with "
                            "--refresh-summary"}
    data = json.loads(path.read_text())
    found = {key: _find(data, key) for key in ("qat_static_accuracy", "best_ptq_accuracy")}
    missing = [k for k, v in found.items() if v is None]
    return found | ({"qat_note": f"results/qat.json has no {', '.join(missing)}"} if missing else
                    {"qat_note": "from results/qat.json"})


def _find(data: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in nested dicts (``summary`` first)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in ([data["summary"]] if "summary" in data else []) + list(data.values()):
            if (found := _find(value, key)) is not None:
                return found
    return None


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "formats_total": len(rows),
        "formats_loadable_everywhere": sum(r["loadable_everywhere"] for r in rows),
        "formats_within_target": sum(r["loadable_everywhere"] and r["within_target"] for r in rows),
        "not_loadable": [f"{r['name']}: {tool}" for r in rows for tool, result in r["tools"].items()
                         if result["status"] == "failed"],
        **qat_numbers(),
    }


def cell(result: dict[str, Any]) -> str:
    if result["status"] == "n/a":
        return "n/a"
    if result["status"] != "ok":
        return "**fails**"
    if "max_abs_diff" not in result:
        return "yes"
    mark = "" if result["meets_target"] else " (!)"
    return f"yes, {result['max_abs_diff']:.1e} / {result['agreement']:.1%}{mark}"


def source_cell(versus: dict[str, Any] | None) -> str:
    if not versus:
        return ""
    return f"{versus['source']}: {versus['max_abs_diff']:.1e} / {versus['agreement']:.1%}"


def _label_agreement(outputs: list[dict[str, Any]]) -> float:
    values = [t["label_agreement"] for r in outputs for t in r["tools"].values() if "label_agreement" in t]
    return min(values, default=float("nan"))


def _score(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def report(payload: dict[str, Any]) -> str:
    rows = [{"output": r["name"], "kind": r["kind"], **{t: cell(r["tools"][t]) for t in TOOLS},
             "everywhere": "yes" if r["loadable_everywhere"] else "no",
             "own vs source": source_cell(r.get("vs_source"))} for r in payload["outputs"]]
    reasons = sorted({(t, r["tools"][t]["why"]) for r in payload["outputs"] for t in TOOLS
                      if r["tools"][t]["status"] == "n/a"})
    failures = [f"- {r['name']} / {t}: {r['tools'][t]['error']}" for r in payload["outputs"] for t in TOOLS
                if r["tools"][t]["status"] == "failed"]
    s = payload["summary"]
    lines = [
        "# Interop: which standard tools load each output (`benchmarks/interop.py`)", "",
        f"Every output made by the CLI from `{payload['source']}` (short jobs, `benchmarks/work/interop/`), "
        f"loaded by each standard tool that applies; cells: max |Δlogit| / argmax agreement against the "
        f"project's own predictor on {payload['n_texts']} held-out tweets (masked-LMs: vocabulary logits "
        f"at {len(MASKED)} masks). Targets: |Δ| <= {FP32_TARGET:g} for fp32 outputs, agreement >= "
        f"{INT8_TARGET:.1%} for int8 ones (`(!)`: missed). Tool versions: {payload['versions']}.", "",
        markdown_table(rows, ["output", "kind", *TOOLS, "everywhere", "own vs source"]),
        f"The `pipeline` answers (label names from `config.json`; fill-mask: top tokens) agreed with the "
        f"project's labels on {_label_agreement(payload['outputs']):.1%} of the texts at worst.", "",
        "An ONNX output gives the project's very logits in onnxruntime and Optimum (Δ 0): all three run "
        "the same graph on the same batches. What a conversion itself costs is the last column: the "
        "project's predictor on the output vs on the directory it was converted from (`--model`).", "",
        f"Summary: {s['formats_loadable_everywhere']} of {s['formats_total']} outputs load in every tool "
        f"that applies ({s['formats_within_target']} within target); QAT-static accuracy "
        f"{_score(s['qat_static_accuracy'])}, best PTQ accuracy {_score(s['best_ptq_accuracy'])} "
        f"({s['qat_note']}).", "",
        "Shrunk models (`config.pruned_heads`) are loaded with transformers 4.57 (Optimum venv): "
        "transformers 5 dropped head pruning, so there only distilprune rebuilds them.", "",
        "## n/a by design", "", *[f"- {tool}: {why}" for tool, why in reasons], "",
    ]
    if failures:
        lines += ["## Failures", "", *failures, ""]
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import version

    names = ("transformers", "onnxruntime", "tokenizers", "huggingface_hub", "torch")
    main = ", ".join(f"{n} {version(n)}" for n in names)
    side = "Optimum venv missing"
    if (OPTIMUM_VENV / "bin" / "python").is_file():
        code = "from importlib.metadata import version as v; print(', '.join(n + ' ' + v(n) for n in " \
               "('optimum-onnx', 'optimum', 'transformers', 'onnxruntime', 'torch')))"
        side = subprocess.run([str(OPTIMUM_VENV / "bin" / "python"), "-c", code], capture_output=True,
                              text=True, check=False).stdout.strip()
    return f"main venv: {main}; Optimum venv: {side}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=300, help="held-out tweets compared")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense", type=Path, default=DENSE, help="the fine-tuned source model")
    parser.add_argument("--work", type=Path, default=WORK / "interop")
    parser.add_argument("--only", help="comma-separated output names (default: all); their rows "
                                       "replace those of the last results")
    parser.add_argument("--refresh-summary", action="store_true",
                        help="only re-read results/qat.json into the last run's results")
    args = parser.parse_args()
    if args.refresh_summary:
        payload = json.loads((RESULTS / "interop.json").read_text())
        payload["summary"] = summary(payload["outputs"])
        write_results("interop", payload, report(payload))
        print(json.dumps(payload["summary"], indent=1))
        return
    require_data()
    if not (args.dense / "config.json").is_file():
        raise SystemExit(f"{args.dense} missing: run benchmarks/prune.py (its dense stage) first")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    paths, errors = make_outputs(args.work, args.dense, args.threads)
    texts = heldout_tweets(args.dense, args.texts)
    only = set(args.only.split(",")) if args.only else None
    cache: dict[str, np.ndarray] = {}
    rows = [check_output(o, paths, texts, args.threads, cache) if paths[o.name].is_dir()
            else not_made(o, errors.get(o.name, "not made")) for o in OUTPUTS
            if only is None or o.name in only]
    if only is not None and (RESULTS / "interop.json").is_file():  # re-measured rows replace theirs
        kept = json.loads((RESULTS / "interop.json").read_text())["outputs"]
        fresh = {r["name"]: r for r in rows}
        rows = [fresh.pop(r["name"], r) for r in kept] + list(fresh.values())
    source = args.dense.resolve()
    payload = {"summary": summary(rows),
               "source": str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source),
               "n_texts": len(texts), "versions": versions(), "outputs": rows}
    write_results("interop", payload, report(payload))
    print(report(payload))


if __name__ == "__main__":
    run_main(main)
