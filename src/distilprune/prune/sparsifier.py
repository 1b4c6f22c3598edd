"""Gradual magnitude pruning that works in any training loop, as ``torch.ao.pruning``'s
sparsifiers do: :meth:`GradualSparsifier.prepare` attaches the masks (parametrizations),
:meth:`~GradualSparsifier.step` updates them on the cubic schedule, and
:meth:`~GradualSparsifier.squash_mask` bakes them into plain weights. Unstructured, 1x4 blocks
or whole heads/neurons (``method="structured"``). :mod:`distilprune.prune.hook` adapts it to
distilprune's training loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from distilprune.errors import UserError, require
from distilprune.prune.activations import CRITERIA, InputNorms
from distilprune.prune.masks import METHODS, NORMS
from distilprune.prune.parametrize import SCOPES, attach_masks, finalize, prunable_parameters, update_masks
from distilprune.prune.schedules import cubic_sparsity, is_update_step
from distilprune.prune.structured import attach_structured_masks, update_structured_masks

PRUNE_METHODS = (*METHODS, "structured")


@dataclass
class PruneConfig:
    """Gradual magnitude pruning settings; fractions are of the planned optimizer steps.

    ``criterion="activation"`` ranks weights by ``|w| * ||x||`` (Wanda) with the input norms
    collected from the training batches since the previous mask update, instead of ``|w|``.

    ``method="structured"`` prunes the ``heads`` fraction of all attention heads and the
    ``neurons`` fraction of every layer's FFN neurons (see :mod:`distilprune.prune.structured`),
    both from 0 on the same cubic schedule; the sparsity, block and scope settings then do not
    apply, and the jobs remove the pruned heads/neurons physically after training.
    """

    method: str = "unstructured"
    block_size: int = 4
    block_norm: str = "l2"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    start_fraction: float = 0.0
    end_fraction: float = 0.7
    frequency: int = 10
    scope: str = "layer"
    criterion: str = "magnitude"
    include: list[str] | None = None
    exclude: list[str] | None = None
    heads: float = 0.0
    neurons: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` on inconsistent settings."""
        require(self.method in PRUNE_METHODS, f"unknown pruning method {self.method!r}; "
                f"choose one of {', '.join(PRUNE_METHODS)}")
        require(self.block_norm in NORMS,
                f"unknown block norm {self.block_norm!r}; choose one of {', '.join(NORMS)}")
        require(self.scope in SCOPES,
                f"unknown pruning scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        require(self.criterion in CRITERIA,
                f"unknown pruning criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        require(not (self.method == "structured" and self.criterion != "magnitude"),
                "structured pruning ranks heads/neurons by magnitude; the activation criterion "
                "applies to unstructured and block pruning")
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
        for name in ("heads", "neurons"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"{name} fraction must be in [0, 1), got {value}")
        structured = self.method == "structured"
        require(structured or not (self.heads or self.neurons),
                "heads/neurons fractions need the structured pruning method")
        require(not structured or bool(self.heads or self.neurons),
                "structured pruning needs a heads and/or neurons fraction above 0")

    def to_dict(self) -> dict:
        """Plain dict (for run metadata)."""
        return asdict(self)


class GradualSparsifier:
    """Prune the prunable weights (or whole heads/neurons) on the cubic schedule.

    ``prepare(model, total_steps)`` attaches the masks with the initial sparsity applied (step 0);
    call ``step(step)`` after every optimizer step: between ``start_step`` and ``end_step`` the
    masks are recomputed every ``frequency`` steps. ``squash_mask()`` bakes them into the weights.
    """

    def __init__(self, config: PruneConfig):
        config.validate()
        self.config = config
        self.model: nn.Module | None = None
        self.start_step = 0
        self.end_step = 0
        self.current_sparsity = 0.0
        self.history: list[tuple[int, float]] = []
        self.input_norms: InputNorms | None = None

    @property
    def structured(self) -> bool:
        """Whether whole heads/neurons are pruned (``method="structured"``)."""
        return self.config.method == "structured"

    def target_sparsity(self, step: int) -> float:
        """Scheduled sparsity at ``step`` (structured: the share of the heads/neurons targets)."""
        cfg = self.config
        initial, final = (0.0, 1.0) if self.structured else (cfg.initial_sparsity, cfg.final_sparsity)
        return cubic_sparsity(step, initial=initial, final=final, start_step=self.start_step,
                              end_step=self.end_step, frequency=cfg.frequency)

    def prepare(self, model: nn.Module, total_steps: int) -> None:
        """Attach the masks to ``model`` and apply the step-0 sparsity."""
        cfg = self.config
        if self.structured:
            attach_structured_masks(model, cfg.heads > 0, cfg.neurons > 0)
        else:
            targets = prunable_parameters(model, cfg.include, cfg.exclude)
            if not targets:
                raise UserError("no prunable parameters matched (check --include/--exclude)")
            attach_masks(model, targets)
            if cfg.criterion == "activation":
                self.input_norms = InputNorms(model)
        self.model = model
        self.start_step = round(cfg.start_fraction * total_steps)
        self.end_step = max(self.start_step, round(cfg.end_fraction * total_steps))
        self.current_sparsity, self.history = 0.0, []
        self._update(0)

    def step(self, step: int) -> None:
        """After optimizer step ``step``: update the masks when the schedule says so."""
        require(self.model is not None, "prepare(model, total_steps) the sparsifier first")
        if is_update_step(step, self.start_step, self.end_step, self.config.frequency):
            self._update(step)
        if self.input_norms is not None and step >= self.end_step:  # no update comes after
            self.input_norms.remove()
            self.input_norms = None

    def _update(self, step: int) -> None:
        sparsity = self.target_sparsity(step)
        if sparsity != self.current_sparsity or not self.history:
            cfg = self.config
            if self.structured:
                update_structured_masks(self.model, cfg.heads * sparsity, cfg.neurons * sparsity)
            else:
                norms = self.input_norms.scales() if self.input_norms else None
                update_masks(self.model, sparsity, cfg.method, cfg.block_size, cfg.block_norm, cfg.scope,
                             norms)
                if self.input_norms:
                    self.input_norms.reset()
            self.current_sparsity = sparsity
            self.history.append((step, sparsity))

    def reached_final(self, step: int) -> bool:
        """Whether the final sparsity is in place at ``step``."""
        return step >= self.end_step

    def squash_mask(self) -> None:
        """Bake the masks into the weights and remove the parametrizations (and any hooks)."""
        if self.input_norms is not None:
            self.input_norms.remove()
            self.input_norms = None
        if self.model is not None:
            finalize(self.model)

    def state_dict(self) -> dict:
        return {"current_sparsity": self.current_sparsity, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.current_sparsity = state.get("current_sparsity", self.current_sparsity)
        self.history = [tuple(h) for h in state.get("history", self.history)]
