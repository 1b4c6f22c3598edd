"""Int8 quantization: quantization-aware training (usable in any loop; ``QATHook`` adapts it to
``train.py``) and post-training baselines."""

from distilprune.quantize.hook import QATHook
from distilprune.quantize.ptq import dynamic_quantize, static_quantize_onnx
from distilprune.quantize.qat import (
    QATConfig,
    attach_input_quant,
    finalize_qat,
    freeze_observers,
    int8_row_qparams,
    load_qat_params,
    observer_freeze_step,
    prepare_qat,
    quantizable_linears,
    save_qat_params,
)

__all__ = [
    "QATConfig",
    "QATHook",
    "attach_input_quant",
    "dynamic_quantize",
    "finalize_qat",
    "freeze_observers",
    "int8_row_qparams",
    "load_qat_params",
    "observer_freeze_step",
    "prepare_qat",
    "quantizable_linears",
    "save_qat_params",
    "static_quantize_onnx",
]
