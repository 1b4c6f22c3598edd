"""Prediction, classification metrics and their plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)
from torch import nn
from transformers import PreTrainedTokenizerBase

from distilprune.data.batching import (
    EncodedDataset,
    LengthGroupedBatchSampler,
    encode,
    make_collator,
)
from distilprune.io import save_png
from distilprune.models.base import model_inputs


@torch.inference_mode()
def predict_logits(model: nn.Module, dataset: EncodedDataset, tokenizer: PreTrainedTokenizerBase,
                   batch_size: int = 64, bar: Any = None) -> np.ndarray:
    """Logits for every item of ``dataset``, in dataset order (batches grouped by length);
    ``bar`` (a tqdm bar) advances by each batch."""
    model.eval()
    sampler = LengthGroupedBatchSampler(dataset.lengths(), batch_size, seed=0, shuffle=False)
    collate = make_collator(tokenizer)
    out: np.ndarray | None = None
    for indices in sampler:
        batch = collate([dict(dataset[i]) for i in indices])
        logits = model(**model_inputs(model, batch)).logits.float().numpy()
        if out is None:
            out = np.zeros((len(dataset), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
        if bar is not None:
            bar.update(len(indices))
    return out if out is not None else np.zeros((0, 2), dtype=np.float32)


def predict_texts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                  max_length: int = 128, batch_size: int = 64, bar: Any = None,
                  pairs: Sequence[str] | None = None) -> np.ndarray:
    """Logits for raw (already preprocessed) texts, or text pairs with ``pairs`` (the second
    texts); ``bar`` as in :func:`predict_logits`."""
    dataset = EncodedDataset(encode(tokenizer, texts, max_length, pairs))
    return predict_logits(model, dataset, tokenizer, batch_size, bar)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_metrics(labels: Sequence[int], logits: np.ndarray) -> dict:
    """Accuracy, F1 (binary + macro), precision, recall and the confusion matrix."""
    y_true = np.asarray(labels)
    y_pred = logits.argmax(axis=-1)
    binary = logits.shape[-1] == 2
    average = "binary" if binary else "macro"
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "precision": float(precision_score(y_true, y_pred, average=average, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, average=average, zero_division=0)),
        "n": int(len(y_true)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=range(logits.shape[-1])).tolist(),
    }


def plot_confusion_matrix(metrics: dict, label_names: Sequence[str], path: str | Path) -> None:
    """Annotated confusion-matrix heatmap (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > cm.max() / 2 else "black")
    ax.set_xticks(range(len(label_names)), label_names)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, F1 {metrics['f1']:.3f}")
    fig.tight_layout()
    save_png(fig, path)


def plot_pr_curve(labels: Sequence[int], logits: np.ndarray, path: str | Path) -> None:
    """Precision-recall curve of the positive class (binary tasks only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = softmax(logits)[:, 1]
    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(recall, precision)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall (positive class)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
