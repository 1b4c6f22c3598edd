"""distilprune's training-loop hooks for pruning: gradual magnitude pruning (an adapter of
:class:`~distilprune.prune.sparsifier.GradualSparsifier`) and sparsity locking."""

from __future__ import annotations

from torch import nn

from distilprune.prune.parametrize import finalize, lock_sparsity
from distilprune.prune.sparsifier import GradualSparsifier, PruneConfig
from distilprune.train import Hook


class PruningHook(Hook):
    """A :class:`GradualSparsifier` in the training loop: prepared at train begin, stepped after
    every optimizer step; a checkpoint only counts as *best* once the final sparsity is in place.
    With ``finalize_on_end`` the masks are squashed after training (ready for ``save_pretrained``).
    """

    def __init__(self, config: PruneConfig, finalize_on_end: bool = True):
        self.sparsifier = GradualSparsifier(config)
        self.finalize_on_end = finalize_on_end

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        self.sparsifier.prepare(model, total_steps)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.sparsifier.step(step)

    def ready_for_selection(self, step: int) -> bool:
        return self.sparsifier.reached_final(step)

    def state_dict(self) -> dict:
        return self.sparsifier.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sparsifier.load_state_dict(state)

    def on_train_end(self, model: nn.Module) -> None:
        if self.finalize_on_end:
            self.sparsifier.squash_mask()


class LockSparsityHook(Hook):
    """Keep the current zeros of the prunable weights at zero during training (mask-locked
    fine-tuning of a pruned model, QAT of a sparse model)."""

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None,
                 finalize_on_end: bool = True):
        self.include, self.exclude = include, exclude
        self.finalize_on_end = finalize_on_end
        self.locked = 0

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        self.locked = lock_sparsity(model, self.include, self.exclude)

    def on_train_end(self, model: nn.Module) -> None:
        if self.finalize_on_end:
            finalize(model)


__all__ = ["LockSparsityHook", "PruningHook"]
