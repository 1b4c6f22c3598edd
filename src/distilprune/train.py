"""The one training loop. Fine-tuning, distillation, pruning and QAT plug into it.

An *objective* turns a batch into a loss (classification CE, task distillation, MLM
distillation...). *Hooks* observe the loop (pruning masks, logging...). The loop itself only
knows about optimisation, evaluation, early stopping and progress reporting.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

Batch = dict[str, torch.Tensor]


class Objective(Protocol):
    """Computes ``(loss, logs)`` for one batch; ``logs`` are scalar floats for the progress bar."""

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class Hook:
    """Observer of the training loop; override what you need. All methods are no-ops here."""

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        """Called once before the first step with the number of optimizer steps planned."""

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step; ``step`` counts from 1."""

    def on_train_end(self, model: nn.Module) -> None:
        """Called once after training (after the best weights are restored)."""

    def ready_for_selection(self, step: int) -> bool:
        """Whether a checkpoint at ``step`` may be kept as *best* (e.g. pruning has finished)."""
        return True


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training job."""

    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_every: int | None = None
    patience: int | None = 2
    select_metric: str = "accuracy"
    log_every: int = 10


@dataclass
class TrainResult:
    """What happened during training: per-eval metrics, losses and the best evaluation."""

    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


def planned_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps the run will take (``max_steps`` wins over ``epochs``)."""
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _cycle(loader: Iterable[Batch], epoch_setter: Callable[[int], None] | None):
    epoch = 0
    while True:
        if epoch_setter:
            epoch_setter(epoch)
        yield from loader
        epoch += 1


def train(
    model: nn.Module,
    loader: Sequence[Batch] | torch.utils.data.DataLoader,
    objective: Objective,
    cfg: TrainConfig,
    hooks: Sequence[Hook] = (),
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    description: str = "train",
) -> TrainResult:
    """Optimise ``model`` on ``loader`` with ``objective``; evaluate, early-stop, keep the best."""
    set_seed(cfg.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum)
    total = planned_steps(cfg, len(loader))
    eval_every = cfg.eval_every or max(1, len(loader) // cfg.grad_accum)
    optimizer = build_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    epoch_setter = getattr(getattr(loader, "batch_sampler", None), "set_epoch", None)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw_model = accelerator.unwrap_model(model)
    for hook in hooks:
        hook.on_train_begin(raw_model, total)

    result = TrainResult(steps=0, seconds=0.0)
    best_state, best_score, bad_evals = None, -math.inf, 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=description, disable=not accelerator.is_main_process, dynamic_ncols=True)
    model.train()
    running: dict[str, float] = {}
    for micro_step, batch in enumerate(_cycle(loader, epoch_setter), start=1):
        with accelerator.accumulate(model):
            loss, logs = objective(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in logs.items():
            running[key] = running.get(key, 0.0) + value / cfg.grad_accum
        if micro_step % cfg.grad_accum:
            continue
        result.steps += 1
        step = result.steps
        for hook in hooks:
            hook.on_step_end(raw_model, step)
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            result.losses.append({"step": step, **running})
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
        running = {}
        if evaluate and (step % eval_every == 0 or step == total):
            metrics = {"step": step, **evaluate(raw_model)}
            model.train()
            result.history.append(metrics)
            bar.write(f"[{description}] step {step}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if k != "step"))
            if all(h.ready_for_selection(step) for h in hooks):
                score = metrics[cfg.select_metric]
                if score > best_score:
                    best_score, bad_evals, result.best = score, 0, metrics
                    best_state = copy.deepcopy(raw_model.state_dict())
                else:
                    bad_evals += 1
                if cfg.patience is not None and bad_evals > cfg.patience:
                    bar.write(f"[{description}] early stop at step {step}")
                    break
        if step >= total:
            break
    bar.close()
    if best_state is not None:
        raw_model.load_state_dict(best_state)
    model.eval()
    for hook in hooks:
        hook.on_train_end(raw_model)
    result.seconds = time.perf_counter() - start
    accelerator.free_memory()
    return result


def save_losses_plot(result: TrainResult, path: str | Path, title: str = "training loss") -> None:
    """Plot every logged loss term against the step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distilprune.io import atomic_file

    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = sorted({k for row in result.losses for k in row if k != "step"})
    for key in keys:
        rows = [r for r in result.losses if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
