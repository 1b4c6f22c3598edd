"""Load any model directory we produce (classifier, token classifier, QA), for export and benchmarking.

Handles compact sparse/int8 directories (:mod:`distilprune.export.storage`), structurally
shrunk models (``config.pruned_heads``, :mod:`distilprune.shrink`), plain classifiers and
headless checkpoints such as the packaged MiniLM (their random head is seeded, so two loads
give the same model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distilprune.errors import require
from distilprune.models.loading import load_classifier, load_config, load_task_model, load_tokenizer
from distilprune.models.registry import resolve_model
from distilprune.task import task_of_model

ENGINES = ("auto", "torch", "sparse")


def load_source_model(model_dir: str | Path, engine: str = "auto") -> torch.nn.Module:
    """The model stored in ``model_dir`` (alias, directory or hub ID), in eval mode.

    ``engine``: ``auto`` runs each format on its own engine (a sparse-engine directory on the
    sparse kernels, anything else in PyTorch fp32); ``sparse`` packs a plain model's encoder
    Linears for the sparse int8 kernels; ``torch`` refuses a sparse-engine directory.
    """
    from distilprune.engine.sparse import load_sparse, sparsify
    from distilprune.export.storage import load_compact
    from distilprune.formats import ONNX_KINDS, model_kind

    require(engine in ENGINES, f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    path = resolve_model(model_dir)
    kind = model_kind(path)
    require(kind not in ONNX_KINDS, f"{model_dir} is an ONNX export (no PyTorch weights): this "
                                    "command needs the model directory it was exported from")
    if kind == "sparse":
        require(engine != "torch", f"{path} is packed for the sparse engine: use --engine sparse or auto")
        return load_sparse(path)
    config = load_config(path)
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    task = task_of_model(path)
    if task == "classification":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = load_classifier(path, num_labels=config.num_labels, label_names=labels)
    else:  # load_task_model refuses a structurally shrunk directory
        model = (load_compact(path) if kind == "compact"
                 else load_task_model(path, task, labels if task == "token-classification" else None))
    return sparsify(model) if engine == "sparse" else model.eval()


def load_model_and_tokenizer(model_dir: str | Path, engine: str = "auto") -> tuple[torch.nn.Module, Any]:
    """``(model in eval mode on ``engine``, its tokenizer)``."""
    return load_source_model(model_dir, engine), load_tokenizer(model_dir)
