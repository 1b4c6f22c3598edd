"""Evaluate a saved classifier on labelled data, or predict labels for new texts."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.data.loading import load_table
from distilprune.errors import UserError, require
from distilprune.evaluate import (
    classification_metrics,
    plot_confusion_matrix,
    plot_pr_curve,
    predict_texts,
    softmax,
)
from distilprune.export.runtime import read_config
from distilprune.export.source import load_source_model
from distilprune.formats import ONNX_KINDS, model_kind
from distilprune.io import atomic_dir, atomic_file, check_writable, write_json
from distilprune.jobs.common import read_metadata, trained_label_names
from distilprune.models.loading import load_tokenizer, require_classifier
from distilprune.models.registry import resolve_model
from distilprune.progress import chunked, progress_bar


class SavedClassifier:
    """A fine-tuned model directory (or alias) with the preprocessing it was trained with."""

    def __init__(self, model_dir: str | Path, engine: str = "auto"):
        path = Path(resolve_model(model_dir))
        require(path.is_dir(), f"model directory not found: {model_dir}")
        require_classifier(model_dir)
        self.path = path
        self.meta = read_metadata(path)
        self.preprocess: list[str] = self.meta.get("preprocess", [])
        self.max_length: int = int(self.meta.get("max_length", 128))
        self._predict = self._backend(engine)
        id2label = read_config(path).get("id2label") or {}
        self.label_names: list[str] = trained_label_names(self.meta, id2label) or [
            str(i) for i in range(len(id2label) or 2)]

    def _backend(self, engine: str) -> Callable[[list[str], Any], np.ndarray]:
        """``(texts, bar)`` -> logits on the directory's own runtime
        (:func:`~distilprune.formats.model_kind`); ``bar`` is a tqdm bar or ``None``."""
        kind = model_kind(self.path)
        if kind in ONNX_KINDS:
            require(engine == "auto", f"{self.path} is an ONNX export: it runs on onnxruntime "
                                      f"(--engine auto), not --engine {engine}")
            if kind == "deepsparse":
                from distilprune.benchmark.speed import load_runner

                return _with_bar(load_runner(self.path, threads=None).predict_logits)
            from distilprune.export.runtime import OnnxClassifier

            return _with_bar(OnnxClassifier(self.path, max_length=self.max_length).predict_logits)
        model, tokenizer = load_source_model(self.path, engine), load_tokenizer(self.path)
        return lambda texts, bar: predict_texts(model, tokenizer, texts, self.max_length, bar=bar)

    def logits(self, texts: Sequence[str], records: Sequence[dict] | None = None,
               progress: str | None = None) -> np.ndarray:
        """Logits for raw texts (the model's own preprocessing is applied); ``progress`` names a
        progress bar on stderr (shown on a terminal only)."""
        if self.preprocess:
            from distilprune.data.preprocess import build_preprocessor

            fn = build_preprocessor(self.preprocess)
            records = records or [{} for _ in texts]
            texts = [fn(t, r) for t, r in zip(texts, records, strict=True)]
        if progress is None:
            return self._predict(list(texts), None)
        with progress_bar(len(texts), progress) as bar:
            return self._predict(list(texts), bar)


def _with_bar(predict: Callable[[list[str]], np.ndarray]) -> Callable[[list[str], Any], np.ndarray]:
    """A texts -> logits runtime as ``(texts, bar)`` -> logits, in chunks when a bar is given."""
    return lambda texts, bar: predict(texts) if bar is None else chunked(predict, texts, bar)


def evaluate_model(model_dir: str | Path, data: str | Path, out: str | Path | None = None,
                   text_column: str | None = None, label_column: str | None = None,
                   overwrite: bool = True, engine: str = "auto") -> dict[str, Any]:
    """Metrics (JSON) and plots (confusion matrix, PR curve) of a saved model on labelled data."""
    out = Path(out) if out else Path(model_dir) / f"eval_{Path(data).stem}"
    check_writable(out)
    clf = SavedClassifier(model_dir, engine)
    table = load_table(data, text_column, label_column, label_names=clf.label_names)
    logits = clf.logits(table.texts, table.extras or None, progress="evaluate")
    metrics = classification_metrics(table.labels, logits)
    metrics["data"] = str(data)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "metrics.json", metrics)
        plot_confusion_matrix(metrics, clf.label_names, tmp / "confusion_matrix.png")
        if logits.shape[-1] == 2:
            plot_pr_curve(table.labels, logits, tmp / "pr_curve.png")
    metrics["out"] = str(out)
    return metrics


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path,
                 text_column: str | None = None, overwrite: bool = False, engine: str = "auto") -> int:
    """Write ``id,target`` rows (Kaggle style; the target is the model's label name) for every row
    of ``data``; returns the count."""
    out = Path(out)
    check_writable(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    clf = SavedClassifier(model_dir, engine)
    table = load_table(data, text_column, with_labels=False)
    predictions = clf.logits(table.texts, table.extras or None, progress="predict").argmax(axis=-1).tolist()
    with atomic_file(out, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "target"])
        writer.writerows(zip(table.ids, [clf.label_names[p] for p in predictions], strict=True))
    return len(table)


def predict_text(model_dir: str | Path, texts: Sequence[str], engine: str = "auto") -> list[dict[str, Any]]:
    """Label and class probabilities for each text."""
    require(all(t.strip() for t in texts), "empty text given to --text")
    clf = SavedClassifier(model_dir, engine)
    probs = softmax(clf.logits(list(texts)))
    return [
        {"text": t, "label": clf.label_names[int(p.argmax())], "probabilities": p.round(4).tolist()}
        for t, p in zip(texts, probs, strict=True)
    ]
