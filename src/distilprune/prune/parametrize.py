"""Pruning masks as ``torch.nn.utils.parametrize`` parametrizations.

``attach_masks`` turns ``module.weight`` into ``original * mask``: the optimizer keeps updating
the same ``Parameter`` object (``parametrizations.weight.original``) while every forward pass
sees the masked weight and gradients at masked positions are zero. ``finalize`` bakes the masks
into the weights and removes the parametrizations, leaving a plain Hugging Face model.

By default only the weight matrices inside the transformer blocks are prunable: qualified
names containing ``layer.N.`` (BERT/RoBERTa/MPNet ``encoder.layer.N.``, DistilBERT
``transformer.layer.N.``, XLNet ``transformer.layer.N.`` including its ``rel_attn.q/k/v/o/r``
and ``ff.layer_1/2``), excluding norms, biases (XLNet ``r_*_bias``, MPNet
``relative_attention_bias``) and embeddings (XLNet ``seg_embed``). Embeddings, pooler and
classifier are never touched unless ``include`` patterns select them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from distilprune.errors import UserError
from distilprune.prune.masks import BLOCK_MODULE, compute_mask, global_masks, scored_weight

Target = tuple[nn.Module, str, str]
"""``(module, parameter name, qualified name)`` of one prunable tensor."""

DEFAULT_EXCLUDE = (r"norm", r"bias", r"embed")
SCOPES = ("layer", "global")
# Parameters whose dimension 0 is the matmul input (XLNet: einsum "ibh,hnd->ibnd").
INPUT_FIRST = {"XLNetRelativeAttention": frozenset({"q", "k", "v", "r"})}


class WeightMask(nn.Module):
    """Parametrization ``X -> X * mask`` with a persistent bool ``mask`` buffer."""

    def __init__(self, mask: torch.Tensor, input_first: bool = False):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self.input_first = input_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"shape={tuple(self.mask.shape)}, sparsity={1 - kept / self.mask.numel():.3f}"


def is_input_first(module: nn.Module, name: str) -> bool:
    """Whether dimension 0 of ``module.<name>`` is its input dimension (XLNet q/k/v/r)."""
    return any(name in INPUT_FIRST.get(cls.__name__, ()) for cls in type(module).__mro__)


def original_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor behind ``module.<name>`` (the unmasked original when parametrized)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters[name]


def weight_mask(module: nn.Module, name: str) -> WeightMask | None:
    """The :class:`WeightMask` on ``module.<name>``, if any."""
    if parametrize.is_parametrized(module, name):
        for item in module.parametrizations[name]:
            if isinstance(item, WeightMask):
                return item
    return None


def named_tensors(model: nn.Module) -> Iterator[Target]:
    """Every parameter as ``(module, name, qualified name)``; parametrized ones by their
    plain name (``...query.weight``, not ``...parametrizations.weight.original``)."""
    for mod_name, module in model.named_modules():
        if "parametrizations" in mod_name.split("."):
            continue
        names = [n for n, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations.keys())
        for name in names:
            yield module, name, f"{mod_name}.{name}" if mod_name else name


def _compile(patterns: Sequence[str] | None, flags: int = 0) -> list[re.Pattern]:
    try:
        return [re.compile(p, flags) for p in patterns or ()]
    except re.error as exc:
        raise UserError(f"invalid parameter pattern {exc.pattern!r}: {exc}") from exc


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Target]:
    """Weights (ndim >= 2) to prune. ``include`` regexes (searched in qualified names) replace
    the default transformer-block selection; ``exclude`` regexes remove matches."""
    includes, excludes = _compile(include), _compile(exclude)
    defaults = _compile(DEFAULT_EXCLUDE, re.IGNORECASE)
    targets = []
    for module, name, qual in named_tensors(model):
        if original_tensor(module, name).ndim < 2:
            continue
        if includes:
            selected = any(p.search(qual) for p in includes)
        else:
            in_block = bool(BLOCK_MODULE.search(qual))
            selected = in_block and not any(p.search(qual) for p in defaults)
        if selected and not any(p.search(qual) for p in excludes):
            targets.append((module, name, qual))
    return targets


def masked_parameters(model: nn.Module) -> list[tuple[nn.Module, str, str, WeightMask]]:
    """Every masked tensor as ``(module, name, qualified name, mask parametrization)``."""
    found = []
    for module, name, qual in named_tensors(model):
        mask = weight_mask(module, name)
        if mask is not None:
            found.append((module, name, qual, mask))
    return found


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every mask, keyed by qualified parameter name."""
    return {qual: wm.mask.clone() for _, _, qual, wm in masked_parameters(model)}


def has_masks(model: nn.Module) -> bool:
    """Whether any mask parametrization is attached."""
    return any(isinstance(m, WeightMask) for m in model.modules())


def _attach(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    existing = weight_mask(module, name)
    if existing is not None:
        existing.mask.copy_(mask)
    else:
        wm = WeightMask(mask, is_input_first(module, name))
        parametrize.register_parametrization(module, name, wm)


def attach_masks(model: nn.Module, targets: Sequence[Target] | None = None) -> int:
    """Attach all-ones masks to ``targets`` (default: :func:`prunable_parameters`); tensors
    already masked are left as they are. Returns the number of masks attached."""
    targets = prunable_parameters(model) if targets is None else targets
    attached = 0
    for module, name, _ in targets:
        if weight_mask(module, name) is None:
            _attach(module, name, torch.ones_like(original_tensor(module, name), dtype=torch.bool))
            attached += 1
    return attached


@torch.no_grad()
def update_masks(
    model: nn.Module,
    sparsity: float,
    method: str = "unstructured",
    block_size: int = 4,
    norm: str = "l2",
    scope: str = "layer",
    input_norms: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Recompute every attached mask at ``sparsity`` from the magnitudes of the *masked*
    weights, so pruned weights stay pruned while sparsity grows (no regrowth). ``scope``:
    ``"layer"`` prunes every tensor to ``sparsity``; ``"global"`` ranks all of them together.
    ``input_norms`` (by qualified name) weigh each input feature's weights by the norm of that
    feature's activations (:mod:`distilprune.prune.activations`)."""
    masked = masked_parameters(model)
    norms = input_norms or {}
    weights = [(scored_weight(getattr(module, name), norms.get(qual), wm.input_first), wm.input_first)
               for module, name, qual, wm in masked]
    if scope == "global":
        masks = global_masks(weights, sparsity, method, block_size, norm)
    elif scope == "layer":
        masks = [compute_mask(w, sparsity, method, block_size, norm, first) for w, first in weights]
    else:
        raise UserError(f"unknown pruning scope {scope!r}; choose one of {', '.join(SCOPES)}")
    for (_, _, _, wm), mask in zip(masked, masks, strict=True):
        wm.mask.copy_(mask)


@torch.no_grad()
def lock_sparsity(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> int:
    """Attach fixed masks ``weight != 0`` to the prunable tensors that have zeros, so further
    training keeps every zero exactly zero. Returns the number of tensors locked."""
    locked = 0
    for module, name, _ in prunable_parameters(model, include, exclude):
        keep = getattr(module, name) != 0
        if bool(keep.all()) and weight_mask(module, name) is None:
            continue
        _attach(module, name, keep)
        locked += 1
    return locked


def finalize(model: nn.Module) -> int:
    """Bake masks into the weights and remove the parametrizations (same ``Parameter``
    objects, normal names): ``save_pretrained`` then saves a plain model. Returns the count."""
    masked = masked_parameters(model)
    for module, name, _, _ in masked:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return len(masked)
