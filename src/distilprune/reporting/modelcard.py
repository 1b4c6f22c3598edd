"""The model card (``README.md``) of every model directory distilprune writes.

YAML front matter that ``huggingface_hub.ModelCard.load`` parses (base model, task, dataset,
metrics, sparsity, quantization, distilprune version and the run's config), then a body that
says how to load the directory and which preprocessing its inputs need. Everything is read from
the directory itself (``config.json``, ``distilprune.json``, ``export.json``, ``parity.json``),
so call :func:`write_model_card` last, inside the writer's atomic directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from distilprune import __version__
from distilprune.formats import COMPACT_WEIGHTS, model_kind
from distilprune.metadata import METADATA_FILE

CARD_FILE = "README.md"
METRICS = {"accuracy": "Accuracy", "f1": "F1", "f1_macro": "F1 (macro)", "precision": "Precision",
           "recall": "Recall"}
STEP_TEXT = {
    "keyword": "prefix the `keyword` column", "location": "prefix the `location` column",
    "html": "unescape HTML entities", "urls": "replace links with `URL`",
    "users": "replace @mentions with `@USER`", "hashtags": "split hashtags into words",
    "emoji": "replace emoji with their names", "lowercase": "lower-case",
    "whitespace": "collapse whitespace",
}
LOADING = {
    "torch": "transformers: `pipeline(\"text-classification\", model=DIR)` or "
             "`AutoModelForSequenceClassification.from_pretrained(DIR)`",
    "shrunk": "distilprune (`distilprune predict --model DIR`); heads removed per `config.pruned_heads`",
    "onnx": "onnxruntime + tokenizers (`model.onnx`, `tokenizer.json`; inputs listed in `export.json`), "
            "or `distilprune predict --model DIR`",
    "deepsparse": "DeepSparse or onnxruntime (static shapes, see `export.json`)",
    "compact": "distilprune (`distilprune predict --model DIR`): sparse bitmask safetensors",
    "sparse": "distilprune's sparse int8 engine (`distilprune predict --model DIR`)",
}


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _base_model(meta: dict[str, Any], export: dict[str, Any]) -> str | None:
    """The hub ID of a packaged alias, else the model the run started from."""
    from distilprune.models.registry import ALIASES

    base = meta.get("base_model") or meta.get("teacher") or export.get("source")
    if base in ALIASES:
        return ALIASES[base].description.split(":")[0]
    return str(base) if base else None


def _quantization(kind: str, meta: dict[str, Any], export: dict[str, Any], folder: Path) -> str:
    parts = []
    if (meta.get("config") or {}).get("qat") is not None:
        parts.append("QAT int8 (weights and activations fake-quantized in training)")
    if export.get("int8"):
        method = (export.get("quantization") or {}).get("method", "onnxruntime")
        parts.append(f"int8 weights ({method})")
    if kind == "sparse":
        parts.append("int8 block-sparse weights (sparse engine)")
    if kind == "compact" and _compact_int8(folder):
        parts.append("int8 per-row weights (compact storage)")
    return "; ".join(parts) or "none (fp32)"


def _compact_int8(folder: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(folder / COMPACT_WEIGHTS), framework="np") as handle:
        manifest = json.loads((handle.metadata() or {}).get("manifest", "{}"))
    return any("int8" in info["layout"] for info in manifest.values())


def _dataset(meta: dict[str, Any]) -> str | None:
    train = ((meta.get("config") or {}).get("data") or {}).get("train")
    return Path(train).name if train else None


def _model_index(name: str, dataset: str | None, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    values = [{"type": k, "name": label, "value": round(float(metrics[k]), 4)}
              for k, label in METRICS.items() if isinstance(metrics.get(k), int | float)]
    data = {"name": f"{dataset or 'data'} (validation split)", "type": dataset or "data",
            "split": "validation"}
    return [{"name": name, "results": [{"task": {"type": "text-classification"},
                                        "dataset": data, "metrics": values}]}]


def card_metadata(folder: Path, measured: dict[str, Any] | None) -> dict[str, Any]:
    """The YAML front matter of ``folder``'s card (``measured``: metrics of these very weights)."""
    config, meta = _read(folder, "config.json"), _read(folder, METADATA_FILE)
    export = _read(folder, "export.json")
    kind, dataset = model_kind(folder), _dataset(meta)
    classifier = any("ForSequenceClassification" in a for a in config.get("architectures") or [])
    onnx = kind in ("onnx", "deepsparse")
    quantization = _quantization(kind, meta, export, folder)
    tags = ["distilprune", f"distilprune-{__version__}", kind]
    tags += ["int8"] * (quantization != "none (fp32)") + ["sparse"] * bool(meta.get("sparsity"))
    data: dict[str, Any] = {
        "library_name": "onnx" if onnx else "transformers" if kind == "torch" else "distilprune",
        "pipeline_tag": _pipeline_tag(config, meta, classifier),
        "tags": tags,
        "base_model": _base_model(meta, export),
        "datasets": [dataset] if dataset else None,
        "metrics": [k for k in METRICS if k in (measured or meta.get("metrics") or {})] or None,
    }
    if measured and classifier:
        data["model-index"] = _model_index(folder.name, dataset, measured)
    data["distilprune"] = _drop_none({
        "version": __version__, "format": kind, "quantization": quantization,
        "sparsity": meta.get("sparsity"), "labels": _labels(config, meta),
        "preprocess": meta.get("preprocess") or [], "max_length": meta.get("max_length"),
        "metrics": None if measured else meta.get("metrics") and _short(meta["metrics"]),
        "parity": _short(_read(folder, "parity.json")) or None,
        "config": meta.get("config"), "distillation": meta.get("distillation"),
    })
    return _drop_none(data)


def _pipeline_tag(config: dict[str, Any], meta: dict[str, Any], classifier: bool) -> str:
    """text-classification, token-classification, question-answering, or fill-mask (an encoder)."""
    from distilprune.task import PIPELINE_TAGS, has_head, task_of_config

    task = task_of_config(config, meta)
    if task != "classification" and has_head(config, task):
        return PIPELINE_TAGS[task]
    return "text-classification" if classifier else "fill-mask"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _labels(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    if meta.get("label_names"):
        return [str(n) for n in meta["label_names"]]
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _short(values: dict[str, Any]) -> dict[str, Any]:
    """Scalar entries only (no confusion matrix), floats rounded."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()
            if isinstance(v, int | float | str)}


def card_body(folder: Path, data: dict[str, Any]) -> str:
    """Markdown: what the directory is, how to load it, labels, preprocessing, results."""
    dp = data["distilprune"]
    steps = dp["preprocess"]
    pre = ("; ".join(f"`{s}`: {STEP_TEXT.get(s, s)}" for s in steps) if steps
           else "none: raw text goes straight to the tokenizer")
    lines = [
        f"# {folder.name}", "",
        f"A {data['pipeline_tag']} model written by distilprune {__version__} "
        f"(format `{dp['format']}`) from `{data.get('base_model', 'unknown')}`.", "",
        f"- Load with: {LOADING[dp['format']]}.",
        f"- Labels: {', '.join(f'`{label}`' for label in dp['labels']) or 'unknown'}.",
        f"- Quantization: {dp['quantization']}.",
        f"- Sparsity of the prunable weights: {_percent(dp.get('sparsity'))}.", "",
        "## Preprocessing", "",
        f"Apply these steps to every text before tokenizing it, in this order: {pre}. "
        f"Truncate to {dp.get('max_length') or 128} tokens. `distilprune predict`, `evaluate` and "
        "`serve` do this themselves; `pipeline()` and onnxruntime users must do it first.", "",
    ]
    lines += _results(data)
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def _results(data: dict[str, Any]) -> list[str]:
    dp, out = data["distilprune"], ["## Results", ""]
    if "model-index" in data:
        out += [f"- {m['name']}: {m['value']:.4f}" for m in data["model-index"][0]["results"][0]["metrics"]]
    elif dp.get("metrics"):
        out.append("Validation metrics of the model this one was made from: "
                   + ", ".join(f"{k} {dp['metrics'][k]:.4f}" for k in METRICS if k in dp["metrics"]) + ".")
    if dp.get("parity"):
        p = dp["parity"]
        diff, agreement = p.get("max_abs_diff", float("nan")), p.get("agreement", 0.0)
        out.append(f"Parity with the source model on {p.get('n_texts')} texts: max |Δlogit| "
                   f"{diff:.2e}, argmax agreement {agreement:.4f}.")
    return out if len(out) > 2 else out + ["No metrics measured for this directory."]


def copy_training_metadata(model_dir: str | Path, folder: Path) -> None:
    """Keep the source's ``distilprune.json`` (preprocessing, labels, max length) in an export."""
    import shutil

    from distilprune.models.registry import resolve_model

    source = Path(resolve_model(model_dir)) / METADATA_FILE
    if source.is_file():
        shutil.copyfile(source, folder / METADATA_FILE)


def write_model_card(folder: str | Path, measured: dict[str, Any] | None = None) -> Path:
    """Write ``folder/README.md``; ``measured``: validation metrics of exactly these weights."""
    folder = Path(folder)
    data = card_metadata(folder, measured)
    front = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path = folder / CARD_FILE
    path.write_text(f"---\n{front}---\n\n{card_body(folder, data)}", encoding="utf-8")
    return path
