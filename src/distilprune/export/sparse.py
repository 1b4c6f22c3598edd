"""``export --format sparse``: a model directory for the sparse int8 engine, parity-checked.

The parity check reloads what was written and compares its logits with the fp32 PyTorch model
on the given texts (max |Δlogit|, argmax agreement), stored in ``parity.json`` as the ONNX export
does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilprune.engine.sparse import load_sparse, save_sparse_weights, sparsify
from distilprune.export.onnx import DEFAULT_PARITY_TEXTS, PARITY_FILENAME, compare_logits, torch_logits
from distilprune.export.source import load_model_and_tokenizer
from distilprune.io import atomic_dir, write_json
from distilprune.models.loading import model_input_names
from distilprune.reporting.modelcard import copy_training_metadata, write_model_card


def export_sparse(model_dir: str | Path, out: str | Path, *, parity_texts: Sequence[str] | None = None,
                  max_length: int = 128, overwrite: bool = False) -> dict[str, Any]:
    """Pack ``model_dir``'s encoder Linears for the sparse engine into ``out`` (atomic)."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    texts = list(parity_texts or DEFAULT_PARITY_TEXTS)
    names = [n for n in tokenizer.model_input_names if n in model_input_names(model)]
    reference = torch_logits(model, tokenizer, texts, names, max_length=max_length)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary = save_sparse_weights(sparsify(copy.deepcopy(model)), tmp)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = load_sparse(tmp)  # the parity of what was written (int8 embeddings included)
        logits = torch_logits(saved, tokenizer, texts, names, max_length=max_length)
        parity = compare_logits(reference, logits)
        write_json(tmp / PARITY_FILENAME, parity)
        copy_training_metadata(model_dir, tmp)
        write_model_card(tmp)
    return {**summary, "parity": parity, "out": str(out)}

