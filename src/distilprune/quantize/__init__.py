"""Int8 quantization: quantization-aware training (hook) and post-training baselines."""

from distilprune.quantize.ptq import dynamic_quantize, static_quantize_onnx
from distilprune.quantize.qat import (
    QATConfig,
    QATHook,
    finalize_qat,
    freeze_observers,
    int8_row_qparams,
    prepare_qat,
    quantizable_linears,
)

__all__ = [
    "QATConfig",
    "QATHook",
    "dynamic_quantize",
    "finalize_qat",
    "freeze_observers",
    "int8_row_qparams",
    "prepare_qat",
    "quantizable_linears",
    "static_quantize_onnx",
]
