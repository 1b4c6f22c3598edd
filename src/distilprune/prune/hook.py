"""Training-loop hooks: gradual magnitude pruning (Prune Once for All) and sparsity locking."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from distilprune.errors import UserError, require
from distilprune.prune.masks import METHODS, NORMS
from distilprune.prune.parametrize import (
    SCOPES,
    attach_masks,
    finalize,
    lock_sparsity,
    prunable_parameters,
    update_masks,
)
from distilprune.prune.schedules import cubic_sparsity, is_update_step
from distilprune.train import Hook


@dataclass
class PruneConfig:
    """Gradual magnitude pruning settings; fractions are of the planned optimizer steps."""

    method: str = "unstructured"
    block_size: int = 4
    block_norm: str = "l2"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    start_fraction: float = 0.0
    end_fraction: float = 0.7
    frequency: int = 10
    scope: str = "layer"
    include: list[str] | None = None
    exclude: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` on inconsistent settings."""
        require(self.method in METHODS,
                f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        require(self.block_norm in NORMS,
                f"unknown block norm {self.block_norm!r}; choose one of {', '.join(NORMS)}")
        require(self.scope in SCOPES,
                f"unknown pruning scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        require(self.block_size >= 1, f"block size must be >= 1, got {self.block_size}")
        require(self.frequency >= 1, f"pruning frequency must be >= 1, got {self.frequency}")
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        require(self.initial_sparsity <= self.final_sparsity,
                f"initial sparsity {self.initial_sparsity} exceeds final {self.final_sparsity}")
        require(0.0 <= self.start_fraction <= self.end_fraction <= 1.0,
                "need 0 <= start_fraction <= end_fraction <= 1, got "
                f"{self.start_fraction} and {self.end_fraction}")

    def to_dict(self) -> dict:
        """Plain dict (for run metadata)."""
        return asdict(self)


class PruningHook(Hook):
    """Prune the prunable weights on the cubic schedule while training.

    Masks are attached at train begin (with the initial sparsity applied at step 0) and
    recomputed every ``frequency`` steps between ``start_step`` and ``end_step``. A checkpoint
    only counts as *best* once the final sparsity is in place. With ``finalize_on_end`` the
    masks are baked into the weights after training (ready for ``save_pretrained``).
    """

    def __init__(self, config: PruneConfig, finalize_on_end: bool = True):
        config.validate()
        self.config = config
        self.finalize_on_end = finalize_on_end
        self.start_step = 0
        self.end_step = 0
        self.current_sparsity = 0.0
        self.history: list[tuple[int, float]] = []

    def target_sparsity(self, step: int) -> float:
        """Scheduled sparsity at ``step``."""
        cfg = self.config
        return cubic_sparsity(step, initial=cfg.initial_sparsity, final=cfg.final_sparsity,
                              start_step=self.start_step, end_step=self.end_step,
                              frequency=cfg.frequency)

    def _apply(self, model: nn.Module, step: int) -> None:
        sparsity = self.target_sparsity(step)
        if sparsity != self.current_sparsity or not self.history:
            cfg = self.config
            update_masks(model, sparsity, cfg.method, cfg.block_size, cfg.block_norm, cfg.scope)
            self.current_sparsity = sparsity
            self.history.append((step, sparsity))

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        cfg = self.config
        targets = prunable_parameters(model, cfg.include, cfg.exclude)
        if not targets:
            raise UserError("no prunable parameters matched (check --include/--exclude)")
        attach_masks(model, targets)
        self.start_step = round(cfg.start_fraction * total_steps)
        self.end_step = max(self.start_step, round(cfg.end_fraction * total_steps))
        self.current_sparsity, self.history = 0.0, []
        self._apply(model, 0)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if is_update_step(step, self.start_step, self.end_step, self.config.frequency):
            self._apply(model, step)

    def ready_for_selection(self, step: int) -> bool:
        return step >= self.end_step

    def state_dict(self) -> dict:
        return {"current_sparsity": self.current_sparsity, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.current_sparsity = state.get("current_sparsity", self.current_sparsity)
        self.history = [tuple(h) for h in state.get("history", self.history)]

    def on_train_end(self, model: nn.Module) -> None:
        if self.finalize_on_end:
            finalize(model)


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
