"""Quantization-aware training (int8) that plugs into :func:`distilprune.train.train`.

* **Weights** of every selected ``nn.Linear``: per-output-channel symmetric int8 fake
  quantization (grid ``[-127, 127]``, ``scale = amax / 127``, zero point 0), registered as a
  ``torch.nn.utils.parametrize`` parametrization *on top of* any existing one (pruning masks), so
  pruned weights stay exactly zero (zero quantizes to zero). The weight observer is reset
  before every forward, so the scale is exactly the current ``amax / 127`` and the training
  forward equals what :func:`finalize_qat` bakes (or what ``remove_parametrizations(...,
  leave_parametrized=True)``, e.g. :func:`distilprune.prune.finalize`, bakes if it runs first).
* **Activations**: per-tensor fake quantization (affine or symmetric, uint8 or int8) of each
  selected Linear's *input*, via a forward pre-hook and an ``input_fake_quant`` submodule. Its
  observer (moving-average min/max) only updates in training mode and can be frozen.
* :func:`finalize_qat` bakes the weights onto the int8 grid as plain fp32 values, removes every
  QAT module/hook and returns the per-layer scales. The result saves with ``save_pretrained``;
  re-quantizing those weights per channel with ``amax/127`` symmetric int8 is lossless.
* :func:`save_qat_params` keeps those scales beside the model (``qat_qparams.safetensors``: the
  per-channel weight scales and the learned input scale/zero point of every layer);
  :func:`load_qat_params` reads them back and :func:`attach_input_quant` rebuilds the
  fake-quantized model from a saved one (the reference of a static int8 export).

Selection (default): the Linear layers inside the transformer blocks (``...layer.<i>....``),
not embeddings, pooler or classifier. XLNet's attention projections are raw ``nn.Parameter``
einsums, not Linear, so only its feed-forward layers are covered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# torch.ao.quantization is deprecated in favour of torchao, whose QATConfig (with
# IntxFakeQuantizeConfig) is the replacement. We still use torch.ao's FakeQuantize + observers
# (torchao is not a dependency) because:
# - our weight fake quantization is a parametrization stacked on the pruning masks (pruned weights
#   stay exactly zero); torchao's prepare step swaps each Linear for its own FakeQuantizedLinear;
# - the static int8 export (qat_static_onnx) needs one per-tensor activation range per layer,
#   learned in training: torchao's activation fake quantization is dynamic by default
#   (``is_dynamic=True``, e.g. per token), learned static ranges (``range_learning``) are a
#   prototype, and its convert step targets torchao tensor subclasses for PyTorch, not ONNX QDQ;
# - resumable checkpoints store these modules' state.
# torch 2.13 emits no warning for these classes; where torch.ao does warn
# (quantize_dynamic in ptq.py), the warning is silenced locally, never globally.
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.nn.utils import parametrize

from distilprune.errors import UserError, require
from distilprune.prune.masks import BLOCK_MODULE

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
INPUT_ATTR = "input_fake_quant"
QPARAMS_FILENAME = "qat_qparams.safetensors"
QPARAMS_FORMAT = "distilprune-qat-qparams/1"


@dataclass
class QATConfig:
    """Settings of int8 quantization-aware training.

    ``freeze_observers_at``: fraction of the planned steps after which activation observers
    stop updating (``None``: never). ``averaging_constant``: activation min/max EMA constant.
    ``include_head``: also quantize Linear layers outside the transformer blocks.
    """

    activations: bool = True
    activation_dtype: str = "uint8"
    activation_symmetric: bool = False
    averaging_constant: float = 0.01
    freeze_observers_at: float | None = None
    include_head: bool = False

    def __post_init__(self) -> None:
        require(self.activation_dtype in ("uint8", "int8"),
                f"activation_dtype must be 'uint8' or 'int8', got {self.activation_dtype!r}")
        require(0.0 < self.averaging_constant <= 1.0,
                f"averaging_constant must be in (0, 1], got {self.averaging_constant}")
        require(self.freeze_observers_at is None or 0.0 <= self.freeze_observers_at <= 1.0,
                f"freeze_observers_at must be in [0, 1] or None, got {self.freeze_observers_at}")


def quantizable_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules QAT/int8 storage act on, by qualified name."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (include_head or BLOCK_MODULE.search(name))
    }


def _weight_fake_quant() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=WEIGHT_QMIN,
        quant_max=WEIGHT_QMAX, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
        ch_axis=0, averaging_constant=1.0,
    )


def int8_row_qparams(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (output channel) symmetric int8 ``(scale, zero_point)`` of a weight: amax/127."""
    observer = MovingAveragePerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
        quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX,
    )
    observer(weight.detach().float().reshape(weight.shape[0], -1))
    scale, zero_point = observer.calculate_qparams()
    return scale.float(), zero_point.to(torch.int32)


class WeightFakeQuant(nn.Module):
    """Parametrization: per-output-channel symmetric int8 fake quantization of a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_quant = _weight_fake_quant()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # Observe the exact current range (no EMA rounding): scale == amax / 127 every time.
        with torch.inference_mode(False):  # fresh observer buffers must not be inference tensors
            self.fake_quant.activation_post_process.reset_min_max_vals()
        return self.fake_quant(weight)


class InputFakeQuant(nn.Module):
    """Per-tensor activation fake quantization; observes only in training mode, unless frozen."""

    def __init__(self, cfg: QATConfig) -> None:
        super().__init__()
        unsigned = cfg.activation_dtype == "uint8"
        self.fake_quant = FakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=0 if unsigned else -128, quant_max=255 if unsigned else 127,
            dtype=torch.quint8 if unsigned else torch.qint8,
            qscheme=torch.per_tensor_symmetric if cfg.activation_symmetric
            else torch.per_tensor_affine,
            averaging_constant=cfg.averaging_constant,
        )
        self.frozen = False

    def observed(self) -> bool:
        """Whether the observer has seen any data (before that, inputs pass through)."""
        return bool(torch.isfinite(self.fake_quant.activation_post_process.min_val))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observe = self.training and not self.frozen
        self.fake_quant.observer_enabled[0] = int(observe)
        if not observe and not self.observed():
            return x
        return self.fake_quant(x)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, INPUT_ATTR)(args[0]), *args[1:])


def _fake_quant_index(module: nn.Module) -> int | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for index, item in enumerate(module.parametrizations.weight):
        if isinstance(item, WeightFakeQuant):
            return index
    return None


def is_qat_prepared(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries QAT fake quantization."""
    return any(_fake_quant_index(m) is not None or hasattr(m, INPUT_ATTR) for m in model.modules())


def prepare_qat(model: nn.Module, cfg: QATConfig | None = None) -> list[str]:
    """Attach weight (and input) fake quantization to the selected Linear layers, in place.

    Composes with existing weight parametrizations (pruning masks): the fake quantization is
    appended after them. Returns the names of the prepared layers.
    """
    cfg = cfg or QATConfig()
    require(not is_qat_prepared(model), "model is already prepared for QAT")
    layers = quantizable_linears(model, cfg.include_head)
    require(bool(layers), "no quantizable Linear layers found in the model")
    for module in layers.values():
        parametrize.register_parametrization(module, "weight", WeightFakeQuant())
        if cfg.activations:
            module.add_module(INPUT_ATTR, InputFakeQuant(cfg))
            module.register_forward_pre_hook(_quantize_input)
    return list(layers)


def observer_freeze_step(cfg: QATConfig, total_steps: int) -> int | None:
    """The step after which :func:`freeze_observers` is called (``None``: never)."""
    if cfg.freeze_observers_at is None:
        return None
    return max(1, math.ceil(cfg.freeze_observers_at * total_steps))


def freeze_observers(model: nn.Module) -> None:
    """Stop updating activation ranges (weights keep following the current weights)."""
    for module in model.modules():
        if isinstance(module, InputFakeQuant):
            module.frozen = True


def _bake_weight(module: nn.Module, index: int) -> torch.Tensor:
    """Replace the fake-quant parametrization at ``index`` by int8-grid values; return scales."""
    plist = module.parametrizations.weight
    with torch.no_grad():
        inner = plist.original
        for item in list(plist)[:index]:
            inner = item(inner)
        scale, zero_point = int8_row_qparams(inner)
        baked = torch.fake_quantize_per_channel_affine(
            inner.float(), scale, zero_point, 0, WEIGHT_QMIN, WEIGHT_QMAX).to(inner.dtype)
        if len(plist) == 1:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            module.weight.copy_(baked)
            return scale
        del plist[index]
        plist.original.copy_(baked)
        final = module.weight
    if not bool(torch.all((final == baked) | (final == 0))):
        raise RuntimeError("a weight parametrization besides QAT is not a 0/1 mask; cannot bake")
    return scale


def _drop_input_quant(module: nn.Module) -> dict:
    """Remove a layer's input quantizer; its learned ``input_*`` parameters (``None`` if none)."""
    fake = getattr(module, INPUT_ATTR, None)
    if fake is None:
        return {"input_scale": None, "input_zero_point": None, "input_dtype": None}
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _quantize_input:
            del module._forward_pre_hooks[key]
    delattr(module, INPUT_ATTR)
    if not fake.observed():
        return {"input_scale": None, "input_zero_point": None, "input_dtype": None}
    dtype = "uint8" if fake.fake_quant.dtype == torch.quint8 else "int8"
    return {"input_scale": float(fake.fake_quant.scale), "input_dtype": dtype,
            "input_zero_point": int(fake.fake_quant.zero_point)}


def finalize_qat(model: nn.Module) -> dict[str, dict]:
    """Bake fake-quantized weights into plain weights on the int8 grid; remove all QAT state.

    Pruning-mask parametrizations stay in place (with their ``original`` set to the baked
    values). Returns ``{layer: {"weight_scale": Tensor[out], "input_scale": float | None,
    "input_zero_point": int | None, "input_dtype": "uint8" | "int8" | None}}`` (input values
    ``None`` for a layer whose activations were not quantized or never observed). Run it before
    :func:`distilprune.prune.finalize` (which would bake the weights itself, leaving only the
    input quantizers to remove).
    """
    scales: dict[str, dict] = {}
    for name, module in model.named_modules():
        index = _fake_quant_index(module)
        if index is None and not hasattr(module, INPUT_ATTR):
            continue
        if index is not None:
            weight_scale = _bake_weight(module, index)
        else:  # weights already baked by someone else (e.g. pruning finalize ran first)
            weight_scale = int8_row_qparams(module.weight)[0]
        scales[name] = {"weight_scale": weight_scale, **_drop_input_quant(module)}
    require(bool(scales), "model is not prepared for QAT (nothing to finalize)")
    return scales


# ----------------------------------------------------------------------------- learned parameters
def save_qat_params(folder: str | Path, params: dict[str, dict]) -> Path:
    """Write :func:`finalize_qat`'s parameters to ``folder/qat_qparams.safetensors`` (atomically).

    Tensors ``<layer>.weight_scale`` (float32, per output channel), ``<layer>.input_scale``
    (float32) and ``<layer>.input_zero_point`` (int32); the metadata names the scheme: int8
    symmetric per-channel weights on ``[-127, 127]``, per-tensor activations of ``activation_dtype``.
    """
    from safetensors.torch import save

    from distilprune.io import atomic_file

    tensors: dict[str, torch.Tensor] = {}
    dtypes = {info["input_dtype"] for info in params.values() if info["input_scale"] is not None}
    require(len(dtypes) <= 1, f"layers disagree on the activation dtype: {sorted(dtypes)}")
    for name, info in params.items():
        tensors[f"{name}.weight_scale"] = info["weight_scale"].detach().float().contiguous()
        if info["input_scale"] is not None:
            tensors[f"{name}.input_scale"] = torch.tensor([info["input_scale"]], dtype=torch.float32)
            tensors[f"{name}.input_zero_point"] = torch.tensor([info["input_zero_point"]],
                                                               dtype=torch.int32)
    metadata = {"format": QPARAMS_FORMAT, "layers": json.dumps(list(params)),
                "weight": json.dumps({"dtype": "int8", "qmin": WEIGHT_QMIN, "qmax": WEIGHT_QMAX,
                                      "scheme": "per_channel_symmetric", "axis": 0}),
                "activation_dtype": next(iter(dtypes), "none")}
    path = Path(folder) / QPARAMS_FILENAME
    with atomic_file(path, "wb") as handle:
        handle.write(save(tensors, metadata))
    return path


def load_qat_params(folder: str | Path) -> dict[str, dict] | None:
    """The parameters :func:`save_qat_params` wrote into ``folder`` (``None`` if it has none),
    in :func:`finalize_qat`'s layout; a corrupt file is a :class:`UserError`."""
    from safetensors import safe_open

    path = Path(folder) / QPARAMS_FILENAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        layers, dtype = json.loads(meta["layers"]), meta.get("activation_dtype")
        params = {name: _layer_params(tensors, name, dtype) for name in layers}
    except Exception as exc:  # safetensors raises its own error type; JSON/KeyError for bad metadata
        raise UserError(f"{path} is corrupt: {_first_line(exc)}") from exc
    require(meta.get("format") == QPARAMS_FORMAT, f"{path} is not a distilprune QAT file")
    return params


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _layer_params(tensors: dict[str, torch.Tensor], name: str, dtype: str | None) -> dict:
    scale = tensors.get(f"{name}.input_scale")
    return {"weight_scale": tensors[f"{name}.weight_scale"],
            "input_scale": None if scale is None else float(scale[0]),
            "input_zero_point": None if scale is None else int(tensors[f"{name}.input_zero_point"][0]),
            "input_dtype": None if scale is None else dtype}


def attach_input_quant(model: nn.Module, params: dict[str, dict]) -> nn.Module:
    """Re-attach frozen input fake quantization with the learned ``params`` to a saved QAT model.

    The result computes what the QAT model computed in eval mode (its saved weights are already
    on the int8 grid of ``weight_scale``): the reference a static int8 export must reproduce.
    """
    require(not is_qat_prepared(model), "model is already prepared for QAT")
    for name, info in params.items():
        if info["input_scale"] is None:
            continue
        module = model.get_submodule(name)
        fake = InputFakeQuant(QATConfig(activation_dtype=info["input_dtype"]))
        quant = fake.fake_quant
        scale, zero_point = info["input_scale"], info["input_zero_point"]
        quant.scale.copy_(torch.tensor([scale]))
        quant.zero_point.copy_(torch.tensor([zero_point]))
        observer = quant.activation_post_process  # finite range: observed, never updated (frozen)
        observer.min_val.copy_(torch.tensor((quant.quant_min - zero_point) * scale))
        observer.max_val.copy_(torch.tensor((quant.quant_max - zero_point) * scale))
        fake.frozen = True
        module.add_module(INPUT_ATTR, fake)
        module.register_forward_pre_hook(_quantize_input)
    return model


# ----------------------------------------------------------------------------- static int8 ONNX
def fake_quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight on its per-row symmetric int8 grid, row scales)``: how an embedding table is
    stored as int8 (the ONNX Gather and the PyTorch reference compute the same values)."""
    scale, zero_point = int8_row_qparams(weight)
    grid = torch.fake_quantize_per_channel_affine(weight.detach().float(), scale, zero_point, 0,
                                                  WEIGHT_QMIN, WEIGHT_QMAX)
    return grid, scale


def quantize_embedding_rows(model: nn.Module) -> None:
    """Put the word embeddings on their per-row int8 grid, in place (post-training, as the int8
    ONNX stores them)."""
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embedding.weight.copy_(fake_quantize_rows(embedding.weight)[0])


def qat_static_onnx(onnx_in: str | Path, onnx_out: str | Path, model: nn.Module,
                    params: dict[str, dict], embeddings: bool = True) -> dict:
    """Static int8 (QDQ) copy of the fp32 ONNX export of a saved QAT ``model``, from ``params``.

    Each quantized layer's MatMul (found by its weight's values: exporters rename, transpose and
    fold initializers) gets int8 per-channel weights (``DequantizeLinear`` with the learned
    ``weight_scale``, axis 1) and a ``QuantizeLinear``/``DequantizeLinear`` pair on its input with
    the learned input scale and zero point: nothing is calibrated. ``embeddings``: the word
    embedding table is stored int8 per row too (gathered, then scaled; not learned in QAT: the
    reference model needs :func:`quantize_embedding_rows`). Returns a summary for
    ``export.json``; the output is written atomically.
    """
    import onnx

    from distilprune.io import atomic_file

    proto = onnx.load(str(onnx_in))
    if embeddings:
        _quantize_embedding_gather(proto.graph, model.get_input_embeddings().weight)
    layers = {name: info for name, info in params.items() if info["input_scale"] is not None}
    require(bool(layers), "the QAT model has no learned activation scales (trained without "
            "activation quantization?): nothing to export as static int8")
    weights = {name: model.get_submodule(name).weight.detach().float().numpy() for name in layers}
    matches = _match_layers(proto.graph, weights)
    missing = sorted(set(layers) - set(matches.values()))
    require(not missing, f"cannot find QAT layer {missing[0] if missing else ''} in the ONNX graph")
    error = _insert_qdq(proto.graph, matches, layers, weights)
    _drop_unused(proto.graph)
    onnx.checker.check_model(proto)
    with atomic_file(onnx_out, "wb") as handle:
        handle.write(proto.SerializeToString())
    return {"method": "qat-static", "format": "QDQ", "layers": len(layers),
            "activations": f"per-tensor {next(iter(layers.values()))['input_dtype']}, learned in QAT",
            "weights": "int8 per-channel symmetric [-127, 127], learned in QAT",
            "embeddings": "int8 per row (post-training)" if embeddings else "fp32",
            "weight_grid_max_error": error}


def _quantize_embedding_gather(graph, weight: torch.Tensor) -> None:
    """Store the Gather table equal to ``weight`` as int8 rows: Gather the rows and their scales,
    cast, multiply (only the gathered rows are dequantized)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    key = _weight_key(weight.detach().float().numpy())
    names = [init.name for init in graph.initializer
             if tuple(init.dims) == key[0] and _weight_key(numpy_helper.to_array(init)) == key]
    gathers = [n for n in graph.node if n.op_type == "Gather" and names and n.input[0] == names[0]]
    require(len(gathers) == 1, "cannot find the word embedding lookup in the ONNX graph")
    grid, scale = fake_quantize_rows(weight)
    rows = torch.round(grid / scale[:, None]).to(torch.int8).numpy()
    graph.initializer.extend([numpy_helper.from_array(rows, "word_embeddings.quantized"),
                              numpy_helper.from_array(scale.numpy()[:, None].astype(np.float32),
                                                      "word_embeddings.scale")])
    node, out = gathers[0], gathers[0].output[0]
    node.input[0], node.output[0] = "word_embeddings.quantized", "word_embeddings.rows_q"
    index = list(graph.node).index(node) + 1
    extra = [
        helper.make_node("Gather", ["word_embeddings.scale", node.input[1]],
                         ["word_embeddings.row_scale"], name="word_embeddings.scale_Gather"),
        helper.make_node("Cast", ["word_embeddings.rows_q"], ["word_embeddings.rows_f"],
                         name="word_embeddings.Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["word_embeddings.rows_f", "word_embeddings.row_scale"], [out],
                         name="word_embeddings.Mul"),
    ]
    for offset, item in enumerate(extra):
        graph.node.insert(index + offset, item)


def _weight_key(array) -> tuple:
    import hashlib

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.shape, hashlib.sha1(array.tobytes()).hexdigest()


def _matmul_weight(node, initializers: dict, producers: dict):
    """The constant ``[in, out]`` weight of a MatMul (an initializer, possibly transposed)."""
    from onnx import numpy_helper

    name = node.input[1]
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    source = producers.get(name)
    if source is not None and source.op_type == "Transpose" and source.input[0] in initializers:
        perm = [list(a.ints) for a in source.attribute if a.name == "perm"]
        if perm in ([], [[1, 0]]):
            return numpy_helper.to_array(initializers[source.input[0]]).T
    return None


def _match_layers(graph, weights: dict) -> dict[int, str]:
    """``{index of MatMul node: layer}`` for the MatMuls computing a QAT layer."""
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    by_key: dict[tuple, list[str]] = {}
    for name, weight in weights.items():
        by_key.setdefault(_weight_key(weight.T), []).append(name)
    matches: dict[int, str] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul":
            continue
        weight = _matmul_weight(node, initializers, producers)
        names = by_key.get(_weight_key(weight)) if weight is not None and weight.ndim == 2 else None
        if names:
            matches[index] = names.pop(0)  # identical weights (rare): one MatMul each, in order
    return matches


def _insert_qdq(graph, matches: dict[int, str], layers: dict, weights: dict) -> float:
    """Rewrite the matched MatMuls to QDQ form; returns the largest weight change (0: lossless)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, error = [], 0.0
    for index, node in enumerate(graph.node):
        name = matches.get(index)
        if name is None:
            nodes.append(node)
            continue
        info, tag = layers[name], name.replace(".", "_")
        scale = info["weight_scale"].detach().float().numpy()
        weight_t = weights[name].T
        quantized = np.clip(np.rint(weight_t / scale[None, :]), WEIGHT_QMIN, WEIGHT_QMAX)
        error = max(error, float(np.abs(quantized * scale[None, :] - weight_t).max()))
        zp_type = TensorProto.UINT8 if info["input_dtype"] == "uint8" else TensorProto.INT8
        graph.initializer.extend([
            numpy_helper.from_array(quantized.astype(np.int8), f"{tag}.weight_quantized"),
            numpy_helper.from_array(scale.astype(np.float32), f"{tag}.weight_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{tag}.weight_zero_point"),
            numpy_helper.from_array(np.array(info["input_scale"], np.float32), f"{tag}.input_scale"),
            helper.make_tensor(f"{tag}.input_zero_point", zp_type, [], [info["input_zero_point"]]),
        ])
        source = node.input[0]
        nodes += [
            helper.make_node("QuantizeLinear", [source, f"{tag}.input_scale", f"{tag}.input_zero_point"],
                             [f"{tag}.input_q"], name=f"{tag}.input_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{tag}.input_q", f"{tag}.input_scale",
                                                  f"{tag}.input_zero_point"],
                             [f"{tag}.input_dq"], name=f"{tag}.input_DequantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{tag}.weight_quantized", f"{tag}.weight_scale",
                                                  f"{tag}.weight_zero_point"],
                             [f"{tag}.weight_dq"], name=f"{tag}.weight_DequantizeLinear", axis=1),
        ]
        node.input[0], node.input[1] = f"{tag}.input_dq", f"{tag}.weight_dq"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return error


def _drop_unused(graph) -> None:
    """Remove nodes and initializers nothing reads any more (the replaced fp32 weights)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
