"""Post-training int8 baselines: PyTorch dynamic and ONNX Runtime static quantization."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedTokenizerBase

from distilprune.errors import UserError, require


def _require_plain(model: nn.Module) -> None:
    parametrized = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    require(not parametrized, "model still has parametrizations (pruning masks or QAT) on "
            f"{parametrized[0] if parametrized else ''}: finalize them before quantizing")


def dynamic_quantize(model: nn.Module, per_channel: bool = True, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (``inplace``: the model itself, no second copy in memory) whose
    ``nn.Linear`` layers are dynamically quantized to int8 (CPU).

    Weights are int8 (per output channel, symmetric ``[-127, 127]`` by default: QAT-finalized
    weights are then represented exactly), activations are quantized on the fly. The copy is
    for PyTorch inference only (it cannot be saved with ``save_pretrained``).
    """
    from torch.ao.quantization import (
        PerChannelMinMaxObserver,
        QConfig,
        default_dynamic_qconfig,
        default_dynamic_quant_observer,
        quantize_dynamic,
    )

    _require_plain(model)
    qconfig = default_dynamic_qconfig
    if per_channel:  # the QAT grid: symmetric [-127, 127], scale = amax / 127 (lossless)
        weight = PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127)
        qconfig = QConfig(activation=default_dynamic_quant_observer, weight=weight)
    # torch.ao is deprecated (torchao is the replacement; see quantize/qat.py for why we have not
    # moved yet): its deprecation warnings are silenced for this call only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated.*")
        return quantize_dynamic((model if inplace else copy.deepcopy(model)).eval(), {nn.Linear: qconfig},
                                dtype=torch.qint8, inplace=inplace)


def onnx_input_names(onnx_path: str | Path) -> list[str]:
    """Graph inputs of an ONNX model (initializers excluded), without loading weights."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


class TextCalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration data: batches of tokenised texts fed by graph input name."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                 input_names: Sequence[str], max_length: int = 128, batch_size: int = 8):
        self.batches = [self._encode(tokenizer, texts[i:i + batch_size], input_names, max_length)
                        for i in range(0, len(texts), batch_size)]
        self.position = 0

    @staticmethod
    def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                input_names: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        shape = enc["input_ids"].shape
        return {name: enc[name].astype(np.int64) if name in enc else np.zeros(shape, np.int64)
                for name in input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def static_quantize_onnx(
    onnx_in: str | Path,
    onnx_out: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 8,
    per_channel: bool = True,
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    calibrate_method: str = "minmax",
    preprocess: bool = True,
) -> Path:
    """Static int8 quantization (QDQ, uint8 activations, int8 weights) of an ONNX classifier.

    Activation ranges are calibrated on ``texts``; only ``op_types`` nodes are quantized.
    ``preprocess`` runs ONNX Runtime's recommended shape inference/optimisation first.
    The output is written atomically.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    require(calibrate_method in methods, f"calibrate_method must be one of {sorted(methods)}")
    require(len(texts) > 0, "static quantization needs at least one calibration text")
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    require(onnx_in.is_file(), f"ONNX model not found: {onnx_in}")
    reader = TextCalibrationReader(tokenizer, texts, onnx_input_names(onnx_in), max_length,
                                   batch_size)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{onnx_out.name}.tmp-", dir=onnx_out.parent) as tmp:
        source, target = onnx_in, Path(tmp) / "quantized.onnx"
        try:
            with _quiet_root_logger():
                if preprocess:
                    source = _preprocess(onnx_in, Path(tmp) / "preprocessed.onnx")
                quantize_static(
                    str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types), per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                )
            os.replace(target, onnx_out)
        except Exception as exc:
            if isinstance(exc, UserError):
                raise
            raise UserError(f"static quantization of {onnx_in} failed: {exc}") from exc
    return onnx_out


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantization tools warn through the root logger; keep only errors."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(onnx_in: Path, out: Path) -> Path:
    """Best-effort ORT pre-processing (graph optimisation + ONNX shape inference).

    Symbolic shape inference is skipped: on failure it dumps debug files into the cwd.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(onnx_in), str(out), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is optional; quantize the original
        return onnx_in
    return out
