"""Activation-aware pruning scores (Wanda, Sun et al. 2023): a weight's importance is
``|w_ij| * ||x_j||``, its magnitude times the L2 norm of the input feature it multiplies, so a
small weight on a large activation is kept. :class:`InputNorms` collects those norms from the
forward passes of training (forward pre-hooks on every masked ``nn.Linear``); tensors that are
not the weight of an ``nn.Linear`` (XLNet's attention einsum tensors) keep plain magnitudes."""

from __future__ import annotations

import torch
from torch import nn

from distilprune.prune.parametrize import masked_parameters

CRITERIA = ("magnitude", "activation")


class InputNorms:
    """Running sums of squared inputs per input feature of the masked ``nn.Linear`` layers,
    keyed by the qualified weight name; :meth:`scales` gives their square roots."""

    def __init__(self, model: nn.Module):
        self._sums: dict[str, torch.Tensor] = {}
        self._handles = []
        for module, name, qual, _ in masked_parameters(model):
            if isinstance(module, nn.Linear) and name == "weight":
                self._handles.append(module.register_forward_pre_hook(self._collector(qual)))

    def _collector(self, qual: str):
        def collect(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            squares = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
            self._sums[qual] = self._sums[qual] + squares if qual in self._sums else squares

        return collect

    def scales(self) -> dict[str, torch.Tensor]:
        """``||x_j||`` per masked weight seen in a forward pass since the last :meth:`reset`."""
        return {qual: total.sqrt() for qual, total in self._sums.items()}

    def reset(self) -> None:
        """Forget the collected norms (the next scores use only what comes after)."""
        self._sums = {}

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._sums = [], {}

