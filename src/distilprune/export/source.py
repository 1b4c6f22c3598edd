"""Load any classifier directory we produce, for export and benchmarking.

Handles compact sparse/int8 directories (:mod:`distilprune.export.storage`), structurally
shrunk models (``config.pruned_heads``, :mod:`distilprune.shrink`), plain classifiers and
headless checkpoints such as the packaged MiniLM (their random head is seeded, so two loads
give the same model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distilprune.models.loading import load_classifier, load_config, load_tokenizer
from distilprune.models.registry import resolve_model


def load_source_model(model_dir: str | Path) -> torch.nn.Module:
    """The classifier stored in ``model_dir`` (alias, directory or hub ID), in eval mode."""
    path = resolve_model(model_dir)
    config = load_config(path)
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_classifier(path, num_labels=config.num_labels, label_names=labels)
    return model.eval()


def load_model_and_tokenizer(model_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """``(classifier in eval mode, its tokenizer)``."""
    return load_source_model(model_dir), load_tokenizer(model_dir)
