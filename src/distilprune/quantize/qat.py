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

Selection (default): the Linear layers inside the transformer blocks (``...layer.<i>....``),
not embeddings, pooler or classifier. XLNet's attention projections are raw ``nn.Parameter``
einsums, not Linear, so only its feed-forward layers are covered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

# torch.ao.quantization is deprecated in favour of torchao, whose QATConfig (with
# IntxFakeQuantizeConfig) is the replacement. We still use torch.ao's FakeQuantize + observers
# because our QAT is a parametrization stacked on the pruning masks (pruned weights stay exactly
# zero) and resumable checkpoints store these modules' state: moving is left for later.
# torch 2.13 emits no warning for these classes; where torch.ao does warn
# (quantize_dynamic in ptq.py), the warning is silenced locally, never globally.
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.nn.utils import parametrize

from distilprune.errors import require
from distilprune.train import Hook

BLOCK_MODULE = re.compile(r"(?:^|\.)layers?\.\d+\.")
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
INPUT_ATTR = "input_fake_quant"


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


def _drop_input_quant(module: nn.Module) -> tuple[float | None, int | None]:
    fake = getattr(module, INPUT_ATTR, None)
    if fake is None:
        return None, None
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _quantize_input:
            del module._forward_pre_hooks[key]
    delattr(module, INPUT_ATTR)
    if not fake.observed():
        return None, None
    return float(fake.fake_quant.scale), int(fake.fake_quant.zero_point)


def finalize_qat(model: nn.Module) -> dict[str, dict]:
    """Bake fake-quantized weights into plain weights on the int8 grid; remove all QAT state.

    Pruning-mask parametrizations stay in place (with their ``original`` set to the baked
    values). Returns ``{layer: {"weight_scale": Tensor[out], "input_scale": float | None,
    "input_zero_point": int | None}}``. Run it before :func:`distilprune.prune.finalize`
    (which would bake the weights itself, leaving only the input quantizers to remove).
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
        input_scale, input_zero_point = _drop_input_quant(module)
        scales[name] = {"weight_scale": weight_scale, "input_scale": input_scale,
                        "input_zero_point": input_zero_point}
    require(bool(scales), "model is not prepared for QAT (nothing to finalize)")
    return scales


class QATHook(Hook):
    """Training-loop hook: prepare QAT at train begin, freeze observers, finalize at the end.

    With pruning hooks, list this one *after* them: masks are then computed from unquantized
    weights (pruned zeros stay zero in either order). ``scales`` holds :func:`finalize_qat`'s
    result after training.
    """

    def __init__(self, cfg: QATConfig | None = None, finalize: bool = True) -> None:
        self.cfg = cfg or QATConfig()
        self.finalize = finalize
        self.freeze_step: int | None = None
        self.scales: dict[str, dict] | None = None

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        if not is_qat_prepared(model):
            prepare_qat(model, self.cfg)
        if self.cfg.freeze_observers_at is not None:
            self.freeze_step = max(1, math.ceil(self.cfg.freeze_observers_at * total_steps))

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.freeze_step is not None and step == self.freeze_step:
            freeze_observers(model)

    def on_train_end(self, model: nn.Module) -> None:
        if self.finalize:
            self.scales = finalize_qat(model)
