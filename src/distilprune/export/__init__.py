"""Export classifiers to ONNX (optionally int8) and serve the exports with onnxruntime.

:class:`OnnxClassifier` lives in :mod:`distilprune.export.runtime`, which does not import torch;
the exporter (:mod:`distilprune.export.onnx`) is imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from distilprune.export.runtime import OnnxClassifier

_LAZY = {"export_onnx", "parity_check", "DEFAULT_PARITY_TEXTS", "quantize_int8"}

__all__ = ["DEFAULT_PARITY_TEXTS", "OnnxClassifier", "export_onnx", "parity_check",
           "quantize_int8"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("distilprune.export.onnx"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
