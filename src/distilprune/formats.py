"""What kind of model a path holds: the one place every command decides it.

Importing this module does not import torch; checking a PyTorch directory does (lazily), when
torch is about to be needed anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Kind = Literal["onnx", "deepsparse", "sparse", "compact", "shrunk", "torch"]
ONNX_KINDS = ("onnx", "deepsparse")  # run by onnxruntime / DeepSparse, no PyTorch weights


def model_kind(path: str | Path) -> Kind:
    """The format of a model directory (or ``.onnx`` file) written by distilprune or transformers.

    ``onnx`` / ``deepsparse``: ``model.onnx`` (export); ``sparse``: ``export --format sparse``;
    ``compact``: ``export --format compact``; ``shrunk``: ``config.pruned_heads`` (``shrink``);
    ``torch``: anything else (finetune, QAT, distill output, hub IDs). Never raises.
    """
    path = Path(path)
    if is_onnx(path):
        from distilprune.engine.deepsparse import is_deepsparse_export

        return "deepsparse" if is_deepsparse_export(path) else "onnx"
    if not (path / "config.json").is_file():
        return "torch"  # a hub ID, or a broken directory the loaders report in one line
    from distilprune.engine.sparse import is_sparse_dir
    from distilprune.export.storage import is_compact

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


def _pruned_heads(path: Path) -> bool:
    try:
        return bool(json.loads((path / "config.json").read_text()).get("pruned_heads"))
    except (OSError, json.JSONDecodeError):
        return False  # the config loader reports a corrupt config.json in one line
