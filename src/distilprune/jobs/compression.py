"""What classification (:mod:`distilprune.jobs.finetune`) and NER / QA
(:mod:`distilprune.jobs.tasks`) fine-tuning share: the run's settings and the compression it
applies while training (mask locking, gradual pruning, int8 QAT) and bakes in afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from distilprune.errors import require_at_least
from distilprune.jobs.common import DataConfig
from distilprune.prune import LockSparsityHook, PruneConfig, PruningHook, finalize, remove_pruned
from distilprune.quantize import QATConfig, QATHook
from distilprune.train import Hook, TrainConfig


@dataclass
class FinetuneConfig:
    """A fine-tuning run: model, data, optimisation and compression switches."""

    model: str = ""
    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lock_sparsity: bool = False
    prune: PruneConfig | None = None
    qat: QATConfig | None = None
    eval_batch_size: int = 64
    overwrite: bool = False

    def __post_init__(self) -> None:
        require_at_least("eval_batch_size", self.eval_batch_size, 1)


def compression_hooks(lock_sparsity: bool, prune: PruneConfig | None = None,
                      qat: QATConfig | None = None) -> list[Hook]:
    """Mask locking (sparse transfer), gradual pruning and/or int8 QAT (applied last)."""
    hooks: list[Hook] = [LockSparsityHook()] if lock_sparsity else []
    if prune:
        hooks.append(PruningHook(prune))
    if qat:
        hooks.append(QATHook(qat))
    return hooks


def finalize_compression(model: nn.Module, prune: PruneConfig | None) -> dict | None:
    """Bake any mask parametrizations into plain weights (a no-op for dense runs); after
    structured pruning (``prune``), remove the pruned heads/neurons (returns what was removed).
    Every job that trains with compression hooks ends with this."""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        finalize(model)
    return vars(remove_pruned(model)) if prune and prune.method == "structured" else None
