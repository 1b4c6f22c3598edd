"""The training loop's adapter of int8 QAT (:mod:`distilprune.quantize.qat`, usable in any loop:
``prepare_qat`` / ``freeze_observers`` at ``observer_freeze_step`` / ``finalize_qat``)."""

from __future__ import annotations

from torch import nn

from distilprune.quantize.qat import (
    QATConfig,
    finalize_qat,
    freeze_observers,
    is_qat_prepared,
    observer_freeze_step,
    prepare_qat,
)
from distilprune.train import Hook


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
        self.freeze_step = observer_freeze_step(self.cfg, total_steps)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.freeze_step is not None and step >= self.freeze_step:  # also after a resume
            freeze_observers(model)

    def on_train_end(self, model: nn.Module) -> None:
        if self.finalize:
            self.scales = finalize_qat(model)
