"""What kind of model a path holds: the one place every command decides it.

Every check reads file names or JSON only: importing or calling this module never imports torch,
and it imports no other distilprune module but :mod:`distilprune.export.runtime` (the writers of
each format import their marker from here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Kind = Literal["onnx", "deepsparse", "sparse", "compact", "shrunk", "torch"]
ONNX_KINDS = ("onnx", "deepsparse")  # run by onnxruntime / DeepSparse, no PyTorch weights
COMPACT_WEIGHTS = "model.compact.safetensors"  # export --format compact (distilprune.export.storage)
SPARSE_WEIGHTS = "model.sparse.safetensors"  # export --format sparse (distilprune.engine.sparse)
DEEPSPARSE_KEY = "deepsparse"  # the export.json field that marks a DeepSparse export


def model_kind(path: str | Path) -> Kind:
    """The format of a model directory (or ``.onnx`` file) written by distilprune or transformers.

    ``onnx`` / ``deepsparse``: ``model.onnx`` (export); ``sparse``: ``export --format sparse``;
    ``compact``: ``export --format compact``; ``shrunk``: ``config.pruned_heads`` (``shrink``);
    ``torch``: anything else (finetune, QAT, distill output, hub IDs). Never raises.
    """
    path = Path(path)
    if is_onnx(path):
        return "deepsparse" if is_deepsparse_export(path) else "onnx"
    if not (path / "config.json").is_file():
        return "torch"  # a hub ID, or a broken directory the loaders report in one line
    if is_sparse_dir(path):
        return "sparse"
    if is_compact(path):
        return "compact"
    return "shrunk" if _pruned_heads(path) else "torch"


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX export (directory or ``.onnx`` file), without importing torch."""
    from distilprune.export.runtime import ONNX_FILENAME

    path = Path(path)
    return path.suffix == ".onnx" or (path / ONNX_FILENAME).is_file()


def is_compact(path: str | Path) -> bool:
    """Whether ``path`` is a compact model directory (:mod:`distilprune.export.storage`)."""
    return (Path(path) / COMPACT_WEIGHTS).is_file()


def is_sparse_dir(path: str | Path) -> bool:
    """Whether ``path`` is a sparse-engine model directory (:mod:`distilprune.engine.sparse`)."""
    return (Path(path) / SPARSE_WEIGHTS).is_file()


def is_deepsparse_export(path: str | Path) -> bool:
    """Whether ``path`` (export dir or its model.onnx) was written by
    :func:`distilprune.engine.deepsparse.export_for_deepsparse`."""
    from distilprune.export.runtime import read_export_metadata

    path = Path(path)
    folder = path.parent if path.is_file() else path
    return bool(read_export_metadata(folder).get(DEEPSPARSE_KEY))


def _pruned_heads(path: Path) -> bool:
    try:
        return bool(json.loads((path / "config.json").read_text()).get("pruned_heads"))
    except (OSError, json.JSONDecodeError):
        return False  # the config loader reports a corrupt config.json in one line
