"""Structured pruning: whole attention heads and FFN neurons as mask parametrizations.

A head mask zeroes the head's rows of Q/K/V (weights and biases) and its columns of the attention
output projection; a neuron mask zeroes its FFN input row and bias and its output column. The
masks are :class:`StructuredMask` parametrizations stacked on whatever a tensor already carries
(e.g. a locked sparsity mask), so the one training loop is unchanged and
:func:`~distilprune.prune.parametrize.finalize` bakes them in. :func:`remove_pruned` then cuts the
all-zero heads and neurons out with :mod:`distilprune.shrink`: smaller dense matrices, same outputs.

Importance is weight magnitude, the criterion of ``shrink.py``: a head's L2 norm over its Q/K/V
rows and output-projection columns, a neuron's L2 norm of its input row plus that of its output
column: structured magnitude pruning on the cubic schedule of Zhu & Gupta (2017); Michel et al.
(2019, "Are Sixteen Heads Really Better than One?") show that most heads can go at little cost.
Scores are taken on the masked weights, so a pruned unit scores 0 and stays pruned while the
fractions grow. Heads are ranked across all layers (at least one kept per layer), neurons within
each layer (the same count everywhere, so the shrunk model has one ``intermediate_size``).
Heads: bert, roberta, distilbert; neurons: all five architectures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from distilprune.errors import require
from distilprune.prune.masks import lowest_off
from distilprune.prune.parametrize import WeightMask
from distilprune.shrink import (
    HEADS_KEY,
    LAYOUTS,
    ShrinkReport,
    _head_size,
    _model_type,
    _select_heads,
    encoder_layers,
    head_importance,
    neuron_importance,
    prune_heads_and_neurons,
)

KINDS = ("heads", "neurons")
Target = tuple[nn.Module, str, int]
"""``(module, tensor name, dimension the unit index runs along)``."""


class StructuredMask(WeightMask):
    """A :class:`WeightMask` whose zeros are whole heads or neurons (rows/columns)."""


def _targets(layer: nn.Module, model_type: str, kind: str) -> list[Target]:
    """The tensors one head/neuron mask covers in ``layer``: rows (+ bias) in, columns out."""
    parts = LAYOUTS[model_type]
    rows, cols = (("q", "k", "v"), ("o",)) if kind == "heads" else (("ffn_in",), ("ffn_out",))
    targets: list[Target] = []
    for key in rows:
        module = layer.get_submodule(parts[key])
        targets += [(module, "weight", 0)] + ([(module, "bias", 0)] if module.bias is not None else [])
    return targets + [(layer.get_submodule(parts[key]), "weight", 1) for key in cols]


def structured_mask(module: nn.Module, name: str) -> StructuredMask | None:
    """The :class:`StructuredMask` on ``module.<name>``, if any."""
    if parametrize.is_parametrized(module, name):
        for item in module.parametrizations[name]:
            if isinstance(item, StructuredMask):
                return item
    return None


def _masked_kinds(model: nn.Module) -> list[str]:
    """The kinds (heads, neurons) that carry structured masks."""
    model_type, layer = _model_type(model), encoder_layers(model)[0]
    kinds = KINDS if model_type in HEADS_KEY else ("neurons",)
    return [kind for kind in kinds
            if structured_mask(*_targets(layer, model_type, kind)[0][:2]) is not None]


def attach_structured_masks(model: nn.Module, heads: bool = True, neurons: bool = True) -> int:
    """Stack all-ones :class:`StructuredMask` s on the head and/or neuron tensors of every layer.
    Returns the number attached (tensors already carrying one are left as they are)."""
    model_type = _model_type(model)
    require(not heads or model_type in HEADS_KEY, f"structured head pruning supports "
            f"{', '.join(HEADS_KEY)}, not {model_type}: prune neurons only")
    attached = 0
    for layer in encoder_layers(model):
        for kind in [k for k, on in zip(KINDS, (heads, neurons), strict=True) if on]:
            for module, name, _ in _targets(layer, model_type, kind):
                if structured_mask(module, name) is None:
                    ones = torch.ones_like(getattr(module, name), dtype=torch.bool)
                    parametrize.register_parametrization(module, name, StructuredMask(ones))
                    attached += 1
    return attached


def _set_masks(layer: nn.Module, model_type: str, kind: str, keep: torch.Tensor, repeat: int) -> None:
    """Expand per-unit keep flags (``repeat`` rows/columns per unit) onto the layer's masks."""
    flags = keep.repeat_interleave(repeat)
    for module, name, dim in _targets(layer, model_type, kind):
        mask = structured_mask(module, name).mask
        shape = [1] * mask.ndim
        shape[dim] = -1
        mask.copy_(flags.view(shape).expand_as(mask))


@torch.no_grad()
def update_structured_masks(model: nn.Module, heads: float, neurons: float) -> dict[str, int]:
    """Mask the lowest-importance ``heads`` fraction of all heads and ``neurons`` fraction of
    every layer's FFN (attached kinds only). Returns how many heads / neurons per layer are off."""
    model_type, layers = _model_type(model), encoder_layers(model)
    kinds, pruned = _masked_kinds(model), {"heads": 0, "neurons": 0}
    if "heads" in kinds:
        scores = head_importance(model)
        chosen = _select_heads(scores, round(heads * sum(row.numel() for row in scores)))
        for index, (layer, row) in enumerate(zip(layers, scores, strict=True)):
            keep = torch.ones(row.numel(), dtype=torch.bool)
            keep[chosen.get(index, [])] = False
            _set_masks(layer, model_type, "heads", keep, _head_size(model.config, model_type))
        pruned["heads"] = sum(len(v) for v in chosen.values())
    if "neurons" in kinds:
        for layer, row in zip(layers, neuron_importance(model), strict=True):
            keep = lowest_off(row, neurons)
            _set_masks(layer, model_type, "neurons", keep, 1)
            pruned["neurons"] = int((~keep).sum())
    return pruned


@torch.no_grad()
def remove_pruned(model: nn.Module) -> ShrinkReport:
    """Physically remove every all-zero head (at least one kept per layer) and the all-zero FFN
    neurons (as many per layer as the layer with fewest has) of a finalized model, in place.
    Zero units contribute nothing, so outputs stay the same up to float rounding."""
    model_type, scores, fractions = _model_type(model), {}, [0.0, 0.0]
    if model_type in HEADS_KEY:
        scores["heads"] = head_importance(model)
        zero = sum(min(int((row == 0).sum()), row.numel() - 1) for row in scores["heads"])
        fractions[0] = zero / sum(row.numel() for row in scores["heads"])
    scores["neurons"] = neuron_importance(model)
    size = scores["neurons"][0].numel()
    fractions[1] = min(min(int((row == 0).sum()) for row in scores["neurons"]), size - 1) / size
    return prune_heads_and_neurons(model, *fractions, scores=scores)


__all__ = ["StructuredMask", "attach_structured_masks", "remove_pruned", "structured_mask",
           "update_structured_masks"]
