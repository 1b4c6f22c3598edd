"""The one training loop. Fine-tuning, distillation, pruning and QAT plug into it.

An *objective* turns a batch into a loss (classification CE, task distillation, MLM
distillation...). *Hooks* observe the loop (pruning masks, logging...). The loop itself only
knows about optimisation, evaluation, early stopping and progress reporting.
"""

from __future__ import annotations

import copy
import math
import os
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

from distilprune.checkpoint import LoopState, apply_rng, load_checkpoint, restore_training, save_checkpoint
from distilprune.errors import require, require_at_least

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

    def state_dict(self) -> dict:
        """JSON-serialisable state saved in training checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (when resuming)."""


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
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "log_every", "checkpoint_every"):
            require_at_least(name, getattr(self, name), 1)
        for name in ("epochs", "lr"):
            require_at_least(name, getattr(self, name), 0, strict=True)
        for name in ("weight_decay", "max_grad_norm", "patience", "seed"):
            require_at_least(name, getattr(self, name), 0)
        require(self.seed is None or self.seed < 2**32, f"seed must be < 2**32, got {self.seed}")
        require(self.warmup_ratio is None or 0 <= self.warmup_ratio < 1,
                f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


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


def _batches(loader: Iterable[Batch], epoch_setter: Callable[[int], None] | None, loop: LoopState):
    """``(epoch, index, batch)`` forever, starting at ``loop``'s epoch and batch (resume).

    Batch order depends only on the sampler's seed and epoch, so skipping the batches a
    checkpoint had consumed replays the uninterrupted run exactly.
    """
    epoch, skip = loop.epoch, loop.batch_in_epoch
    while True:
        if epoch_setter:
            epoch_setter(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield epoch, index, batch
        epoch, skip = epoch + 1, 0


def _generators(objective: Objective) -> list[torch.Generator]:
    """Random generators an objective owns (e.g. dynamic masking), saved with checkpoints."""
    return list(getattr(objective, "generators", list)())


def _resume(cfg: TrainConfig, model: nn.Module, optimizer, scheduler, hooks: Sequence[Hook],
            generators: list[torch.Generator], fingerprint: str | None) -> tuple[LoopState, dict | None]:
    """Load the checkpoint of ``cfg.checkpoint_dir`` into the live objects (if resuming); one
    written by a run with another ``fingerprint`` is refused."""
    ckpt = load_checkpoint(cfg.checkpoint_dir) if cfg.resume and cfg.checkpoint_dir else None
    if ckpt is None:
        return LoopState(fingerprint=fingerprint), None
    require(fingerprint is None or ckpt.loop.fingerprint in (None, fingerprint),
            f"checkpoint {cfg.checkpoint_dir} was written by a run with other settings or input files: "
            "resume with the options and data of the interrupted run, or run without --resume")
    restore_training(ckpt, model, optimizer, scheduler)
    for hook, state in zip(hooks, ckpt.loop.hooks, strict=False):
        hook.load_state_dict(state)
    apply_rng(ckpt, generators)
    return ckpt.loop, ckpt.best


def _cpu_only_launch() -> bool:
    """Launched as one of several processes (torchrun, ``accelerate launch``) on a machine without GPUs.

    accelerate builds its (gloo) process group on CPUs only when asked for the CPU; otherwise each
    process would silently train alone on all the data.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    device_api = getattr(torch, "accelerator", None)
    return not (device_api.is_available() if device_api else torch.cuda.is_available())


def train(
    model: nn.Module,
    loader: Sequence[Batch] | torch.utils.data.DataLoader,
    objective: Objective,
    cfg: TrainConfig,
    hooks: Sequence[Hook] = (),
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    description: str = "train",
    fingerprint: str | None = None,
) -> TrainResult:
    """Optimise ``model`` on ``loader`` with ``objective``; evaluate, early-stop, keep the best.

    With ``cfg.checkpoint_every`` the whole state is saved to ``cfg.checkpoint_dir``; with
    ``cfg.resume`` a run continues from it and ends with the same weights as an uninterrupted one.
    ``fingerprint`` (the run's settings and inputs) is saved with checkpoints: a checkpoint of
    another run is not resumed.
    """
    set_seed(cfg.seed)
    # The scheduler is stepped once per optimizer step below (accelerate would step it once per
    # process: N processes would run through the warmup and decay N times too fast).
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=_cpu_only_launch(),
                              step_scheduler_with_optimizer=False)
    sampler_epoch = getattr(getattr(loader, "batch_sampler", None), "set_epoch", None)
    loader = accelerator.prepare(loader)
    # Counted after sharding: with N processes an epoch is 1/N as many (N times larger) steps.
    total = planned_steps(cfg, len(loader))
    eval_every = cfg.eval_every or max(1, len(loader) // cfg.grad_accum)
    optimizer = build_optimizer(model, cfg)
    # Hooks may re-parametrize weights (pruning masks, QAT): before DDP wraps the model.
    for hook in hooks:
        hook.on_train_begin(model, total)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loader_epoch = getattr(loader, "set_epoch", None)

    def epoch_setter(epoch: int) -> None:
        # accelerate's loader re-sets the sampler epoch from its own counter: drive that counter.
        # Sharded over processes, its batch sampler wraps ours and no longer forwards the epoch.
        for setter in (loader_epoch, sampler_epoch):
            if setter:
                setter(epoch)

    raw_model = accelerator.unwrap_model(model)
    generators = _generators(objective)
    loop, best_state = _resume(cfg, raw_model, optimizer, scheduler, hooks, generators, fingerprint)

    result = TrainResult(steps=loop.step, seconds=0.0, history=loop.history, losses=loop.losses,
                         best=loop.best_metrics)
    best_score = -math.inf if loop.best_score is None else loop.best_score
    start = time.perf_counter()
    bar = tqdm(total=total, initial=loop.step, desc=description,
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    model.train()
    running: dict[str, float] = {}
    for micro_step, (epoch, index, batch) in enumerate(_batches(loader, epoch_setter, loop), start=1):
        with accelerator.accumulate(model):
            loss, logs = objective(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in logs.items():
            running[key] = running.get(key, 0.0) + value / cfg.grad_accum
        if micro_step % cfg.grad_accum:
            continue
        result.steps += 1
        step = result.steps
        loop.epoch, loop.batch_in_epoch = epoch, index + 1
        for hook in hooks:
            hook.on_step_end(raw_model, step)
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            result.losses.append({"step": step, **running})
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
        running = {}
        stop = False
        if evaluate and (step % eval_every == 0 or step == total):
            metrics = {"step": step, **evaluate(raw_model)}
            model.train()
            result.history.append(metrics)
            bar.write(f"[{description}] step {step}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if k != "step"))
            if all(h.ready_for_selection(step) for h in hooks):
                score = metrics[cfg.select_metric]
                if score > best_score:
                    best_score, loop.bad_evals, result.best = score, 0, metrics
                    best_state = copy.deepcopy(raw_model.state_dict())
                else:
                    loop.bad_evals += 1
                stop = cfg.patience is not None and loop.bad_evals > cfg.patience
        if cfg.checkpoint_every and cfg.checkpoint_dir and step % cfg.checkpoint_every == 0:
            loop.step, loop.best_metrics = step, result.best
            loop.best_score = None if best_score == -math.inf else best_score
            loop.hooks = [h.state_dict() for h in hooks]
            if accelerator.is_main_process:  # every process holds the same state
                save_checkpoint(cfg.checkpoint_dir, raw_model, optimizer, scheduler, loop, generators,
                                best_state)
            accelerator.wait_for_everyone()
        if stop:
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

    from distilprune.io import save_png

    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = sorted({k for row in result.losses for k in row if k != "step"})
    for key in keys:
        rows = [r for r in result.losses if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)
