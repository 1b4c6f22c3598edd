"""Structured shrinking: physically remove attention heads and FFN neurons (smaller matrices).

* **FFN neurons** (bert, roberta, distilbert, mpnet, xlnet): the same number of neurons is
  removed from every layer (each layer drops its own lowest-importance ones), so the standard
  config key (``intermediate_size`` / ``hidden_dim`` / ``d_inner``) describes the result and a
  plain ``from_pretrained`` reloads it.
* **Attention heads** (bert, roberta, distilbert): heads are ranked globally (at least one head
  is kept per layer) and removed from Q/K/V (rows) and the output projection (columns).
  Transformers 5 dropped ``prune_heads``, so the removed heads are recorded in
  ``config.pruned_heads`` (``{layer: [original head indices]}``, the transformers-4 convention,
  which transformers 4 re-applies by itself) and models with pruned heads must be loaded with
  :func:`load_shrunk` (or built with :func:`build_from_config`). Head removal is not supported
  for mpnet (shared relative-position bias over all heads, fixed ``all_head_size`` reshape) or
  xlnet (einsum attention parameters); a :class:`UserError` says so.

Importance: a head's score is the L2 norm of its Q/K/V rows and output-projection columns; a
neuron's is the L2 norm of its input row plus its output column (``scores`` overrides both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from distilprune.errors import UserError, require
from distilprune.models.base import count_parameters, load_config

_BERT_LIKE = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
              "o": "attention.output.dense", "attn": "attention.self",
              "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
LAYOUTS: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                   "o": "attention.out_lin", "attn": "attention",
                   "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2"},
    "mpnet": {"ffn_in": "intermediate.dense", "ffn_out": "output.dense"},
    "xlnet": {"ffn_in": "ff.layer_1", "ffn_out": "ff.layer_2"},
}
INTERMEDIATE_KEY = {"bert": "intermediate_size", "roberta": "intermediate_size",
                    "mpnet": "intermediate_size", "distilbert": "hidden_dim", "xlnet": "d_inner"}
HEADS_KEY = {"bert": "num_attention_heads", "roberta": "num_attention_heads",
             "distilbert": "n_heads"}
HIDDEN_KEY = {"bert": "hidden_size", "roberta": "hidden_size", "distilbert": "dim"}


@dataclass
class ShrinkReport:
    """What :func:`prune_heads_and_neurons` removed and the parameter counts around it."""

    heads_removed: dict[int, list[int]] = field(default_factory=dict)
    neurons_removed_per_layer: int = 0
    params_before: int = 0
    params_after: int = 0


def _model_type(model_or_config: nn.Module | PretrainedConfig) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise UserError(f"structured shrinking does not support architecture {model_type!r}; "
                        f"supported: {', '.join(LAYOUTS)}")
    return model_type


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a supported classifier."""
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "layer"):
        try:
            layers = base.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UserError(f"cannot find the transformer layers of {type(model).__name__}")


def _set(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, name, module)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping only ``index`` along ``dim`` (0: outputs, 1: inputs) of the weight."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach()[index])
    new.train(linear.training)
    return new


def _head_size(config: PretrainedConfig, model_type: str) -> int:
    return getattr(config, HIDDEN_KEY[model_type]) // getattr(config, HEADS_KEY[model_type])


def _kept_heads(config: PretrainedConfig, model_type: str, layer: int) -> list[int]:
    pruned = {int(k): v for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    total = getattr(config, HEADS_KEY[model_type])
    return [h for h in range(total) if h not in set(pruned.get(layer, []))]


def _remove_heads(layer: nn.Module, model_type: str, drop: list[int], head_size: int) -> None:
    """Remove the heads at current positions ``drop`` from one layer."""
    parts = LAYOUTS[model_type]
    current = layer.get_submodule(parts["q"]).out_features // head_size
    keep = [h for h in range(current) if h not in set(drop)]
    rows = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in keep])
    for key in ("q", "k", "v"):
        _set(layer, parts[key], _slice_linear(layer.get_submodule(parts[key]), rows, 0))
    _set(layer, parts["o"], _slice_linear(layer.get_submodule(parts["o"]), rows, 1))
    attn = layer.get_submodule(parts["attn"])
    for attr in ("num_attention_heads", "n_heads"):
        if hasattr(attn, attr):
            setattr(attn, attr, len(keep))
    if hasattr(attn, "all_head_size"):
        attn.all_head_size = len(keep) * head_size


def _remove_neurons(layer: nn.Module, model_type: str, keep: torch.Tensor) -> None:
    parts = LAYOUTS[model_type]
    _set(layer, parts["ffn_in"], _slice_linear(layer.get_submodule(parts["ffn_in"]), keep, 0))
    _set(layer, parts["ffn_out"], _slice_linear(layer.get_submodule(parts["ffn_out"]), keep, 1))


def head_importance(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, the L2 norm of each current head's Q/K/V rows and output columns."""
    model_type = _model_type(model)
    require("q" in LAYOUTS[model_type], f"attention-head removal is not supported for {model_type}")
    head_size = _head_size(model.config, model_type)
    parts, scores = LAYOUTS[model_type], []
    for layer in encoder_layers(model):
        sq = sum(layer.get_submodule(parts[k]).weight.detach().pow(2).sum(1) for k in "qkv")
        sq = sq + layer.get_submodule(parts["o"]).weight.detach().pow(2).sum(0)
        scores.append(sq.view(-1, head_size).sum(1).sqrt())
    return scores


def neuron_importance(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, the L2 norm of each FFN neuron's input row plus its output column."""
    parts = LAYOUTS[_model_type(model)]
    scores = []
    for layer in encoder_layers(model):
        w_in = layer.get_submodule(parts["ffn_in"]).weight.detach()
        w_out = layer.get_submodule(parts["ffn_out"]).weight.detach()
        scores.append(w_in.norm(dim=1) + w_out.norm(dim=0))
    return scores


def _check_scores(scores: list[torch.Tensor], expected: list[int], what: str) -> None:
    require(len(scores) == len(expected), f"{what} scores: expected {len(expected)} layers, "
            f"got {len(scores)}")
    for index, (row, size) in enumerate(zip(scores, expected, strict=True)):
        require(row.numel() == size, f"{what} scores of layer {index}: expected {size} values, "
                f"got {row.numel()}")


def _select_heads(scores: list[torch.Tensor], count: int) -> dict[int, list[int]]:
    """Globally lowest-scoring heads (current positions), keeping at least one per layer."""
    ranked = sorted((float(s), layer, head) for layer, row in enumerate(scores)
                    for head, s in enumerate(row.flatten().tolist()))
    remaining = [row.numel() for row in scores]
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if count <= 0:
            break
        if remaining[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            remaining[layer] -= 1
            count -= 1
    return chosen


def _prune_heads(model: nn.Module, fraction: float, scores: list[torch.Tensor] | None
                 ) -> dict[int, list[int]]:
    model_type = _model_type(model)
    require(model_type in HEADS_KEY, f"attention-head removal is not supported for {model_type} "
            "(only bert, roberta, distilbert); use neuron_fraction only")
    config, layers = model.config, encoder_layers(model)
    kept = [_kept_heads(config, model_type, i) for i in range(len(layers))]
    scores = list(scores) if scores is not None else head_importance(model)
    _check_scores(scores, [len(k) for k in kept], "head")
    chosen = _select_heads(scores, round(fraction * sum(len(k) for k in kept)))
    pruned = {int(k): list(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    removed: dict[int, list[int]] = {}
    for index, drop in sorted(chosen.items()):
        _remove_heads(layers[index], model_type, drop, _head_size(config, model_type))
        removed[index] = sorted(kept[index][h] for h in drop)
        pruned[index] = sorted(pruned.get(index, []) + removed[index])
    config.pruned_heads = {str(k): v for k, v in sorted(pruned.items())}
    return removed


def _prune_neurons(model: nn.Module, fraction: float, scores: list[torch.Tensor] | None) -> int:
    model_type = _model_type(model)
    layers = encoder_layers(model)
    size = layers[0].get_submodule(LAYOUTS[model_type]["ffn_in"]).out_features
    scores = list(scores) if scores is not None else neuron_importance(model)
    _check_scores(scores, [size] * len(layers), "neuron")
    count = min(round(fraction * size), size - 1)
    for layer, row in zip(layers, scores, strict=True):
        keep = torch.argsort(row.flatten(), stable=True)[count:].sort().values
        _remove_neurons(layer, model_type, keep)
    setattr(model.config, INTERMEDIATE_KEY[model_type], size - count)
    return count


def prune_heads_and_neurons(
    model: nn.Module,
    head_fraction: float = 0.0,
    neuron_fraction: float = 0.0,
    scores: dict[str, list[torch.Tensor]] | None = None,
) -> ShrinkReport:
    """Remove ``head_fraction`` of all heads and ``neuron_fraction`` of each layer's FFN, in place.

    ``scores`` may give ``{"heads": [per-layer tensor over current heads], "neurons":
    [per-layer tensor over FFN neurons]}``; lower means less important. The config is updated
    (``pruned_heads``, intermediate size) so that :func:`load_shrunk` rebuilds the same shapes.
    """
    require(0.0 <= head_fraction < 1.0, f"head_fraction must be in [0, 1), got {head_fraction}")
    require(0.0 <= neuron_fraction < 1.0,
            f"neuron_fraction must be in [0, 1), got {neuron_fraction}")
    _model_type(model)
    parametrized = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    require(not parametrized, f"{parametrized[0] if parametrized else ''} still has a "
            "parametrization (pruning mask / QAT): finalize it before shrinking")
    scores = scores or {}
    report = ShrinkReport(params_before=count_parameters(model))
    if head_fraction > 0:
        report.heads_removed = _prune_heads(model, head_fraction, scores.get("heads"))
    if neuron_fraction > 0:
        report.neurons_removed_per_layer = _prune_neurons(model, neuron_fraction,
                                                          scores.get("neurons"))
    report.params_after = count_parameters(model)
    return report


def apply_pruned_heads(model: nn.Module) -> nn.Module:
    """Give a freshly built model the head structure recorded in ``config.pruned_heads``."""
    pruned = getattr(model.config, "pruned_heads", None) or {}
    if not pruned:
        return model
    model_type = _model_type(model)
    require(model_type in HEADS_KEY, f"config.pruned_heads is not supported for {model_type}")
    layers, head_size = encoder_layers(model), _head_size(model.config, model_type)
    for key, heads in pruned.items():
        if heads:
            _remove_heads(layers[int(key)], model_type, sorted(heads), head_size)
    return model


def build_from_config(config: PretrainedConfig, auto_class: type = AutoModelForSequenceClassification
                      ) -> nn.Module:
    """A randomly initialised model (default: classifier) with the (possibly shrunk) shapes
    ``config`` describes."""
    return apply_pruned_heads(auto_class.from_config(config))


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("model*.safetensors"))
    require(bool(files), f"no model*.safetensors weights in {path}")
    return files


def load_shrunk(path: str | Path, config: PretrainedConfig | None = None,
                auto_class: type = AutoModelForSequenceClassification) -> nn.Module:
    """Load a model (default: classifier) saved with ``save_pretrained``, re-applying
    ``config.pruned_heads``. ``config`` (default: the saved one) may ask for another head than
    the saved one, e.g. a classifier from a shrunk masked-LM: weights the directory lacks outside
    the encoder (the new head, a pooler) stay freshly initialised, as with ``from_pretrained``."""
    return load_shrunk_with_info(path, config, auto_class)[0]


def load_shrunk_with_info(path: str | Path, config: PretrainedConfig | None = None,
                          auto_class: type = AutoModelForSequenceClassification
                          ) -> tuple[nn.Module, list[str]]:
    """:func:`load_shrunk` plus the names of the weights left freshly initialised."""
    path = Path(path)
    config = config or load_config(path)
    if not getattr(config, "pruned_heads", None):
        model, info = auto_class.from_pretrained(path, config=config, output_loading_info=True)
        return model.eval(), list(info.get("missing_keys", []))
    model = build_from_config(config, auto_class)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied, base = set(getattr(model, "all_tied_weights_keys", None) or {}), model.base_model_prefix + "."
    missing = [k for k in missing if k not in tied]
    bad = [k for k in missing if k.startswith(base) and ".pooler." not in k]
    bad += [k for k in unexpected if k.startswith(base)]
    require(not bad, f"weights in {path} do not match the model: {bad[:3]}")
    return model.eval(), missing
