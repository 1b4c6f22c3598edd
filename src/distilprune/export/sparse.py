"""``export --format sparse``: a model directory for the sparse int8 engine, parity-checked.

Classifiers, token classifiers and QA models alike. The parity check reloads what was written and
compares its outputs with the fp32 PyTorch model's on the given inputs (max |Δlogit|, argmax
agreement), stored in ``parity.json`` as the ONNX export does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distilprune.engine.sparse import load_sparse, save_sparse_weights, sparsify
from distilprune.export.onnx import (
    DEFAULT_PARITY_TEXTS,
    PARITY_FILENAME,
    compare_logits,
    task_parity,
    torch_logits,
)
from distilprune.export.source import load_model_and_tokenizer
from distilprune.io import atomic_dir, write_json
from distilprune.models.loading import model_input_names
from distilprune.reporting.modelcard import copy_training_metadata, write_model_card
from distilprune.task import task_of_module
from distilprune.task_runtime import torch_forward


def export_sparse(model_dir: str | Path, out: str | Path, *, parity_texts: Sequence[Any] | None = None,
                  max_length: int = 128, overwrite: bool = False) -> dict[str, Any]:
    """Pack ``model_dir``'s encoder Linears for the sparse engine into ``out`` (atomic)."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    inputs = list(parity_texts or DEFAULT_PARITY_TEXTS)
    names = [n for n in tokenizer.model_input_names if n in model_input_names(model)]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary = save_sparse_weights(sparsify(copy.deepcopy(model)), tmp)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = load_sparse(tmp)  # the parity of what was written (int8 embeddings included)
        parity = _parity(model, saved, tokenizer, names, inputs, max_length)
        write_json(tmp / PARITY_FILENAME, parity)
        copy_training_metadata(model_dir, tmp)
        write_model_card(tmp)
    return {**summary, "parity": parity, "out": str(out)}


def _parity(model: nn.Module, saved: nn.Module, tokenizer: Any, names: list[str], inputs: list[Any],
            max_length: int) -> dict[str, Any]:
    """The packed model's outputs against the fp32 model's: logits of a classifier, per-token /
    per-window outputs of a token-classification or QA model."""
    task = task_of_module(model)
    if task != "classification":
        packed = (torch_forward(saved, task)[0], names)
        return task_parity(model, tokenizer, names, packed, inputs, max_length)
    texts = [t if isinstance(t, str) else t[0] for t in inputs]
    return compare_logits(torch_logits(model, tokenizer, texts, names, max_length=max_length),
                          torch_logits(saved, tokenizer, texts, names, max_length=max_length))
