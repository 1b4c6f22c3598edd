"""Resumable training state: model, optimizer, scheduler, RNG and data position.

Everything is stored as safetensors (tensors) plus JSON (everything else): no pickle, so a
checkpoint from an untrusted source cannot run code. A checkpoint directory is replaced
atomically (temp dir + rename), so a ``kill -9`` leaves either the previous or the new one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from distilprune.errors import UserError
from distilprune.io import atomic_dir, sweep_stale

STATE_FILE = "trainer.json"


@dataclass
class LoopState:
    """Where the loop is: optimizer steps, epoch, batches consumed in it, selection state."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float | None = None
    best_metrics: dict[str, float] | None = None
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)
    fingerprint: str | None = None  # the run's settings and inputs (see ``train(fingerprint=)``)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous copies (tied weights become separate tensors for safetensors)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return _tensors(tensors), {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, loop: LoopState, generators: list[torch.Generator],
                    best_state: dict[str, torch.Tensor] | None) -> None:
    """Write the whole training state to ``path`` atomically."""
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    rng = {"torch": torch.get_rng_state()}
    rng.update({f"generator.{i}": g.get_state() for i, g in enumerate(generators)})
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(_tensors(model.state_dict()), tmp / "model.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(rng, tmp / "rng.safetensors")
        if best_state is not None:
            save_file(_tensors(best_state), tmp / "best.safetensors")
        meta = {"loop": loop.__dict__, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                "python_random": _jsonable(random.getstate())}
        (tmp / STATE_FILE).write_text(json.dumps(meta))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


@dataclass
class Checkpoint:
    """A loaded checkpoint, applied in two steps: weights/optimizer, then RNG (see :func:`apply_rng`)."""

    loop: LoopState
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: dict[str, torch.Tensor]
    python_random: Any


def load_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint in ``path``, or ``None`` when there is none."""
    path = Path(path)
    sweep_stale(path)  # a save killed between its two renames: the previous checkpoint comes back
    if not (path / STATE_FILE).is_file():
        return None
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        best = load_file(path / "best.safetensors") if (path / "best.safetensors").is_file() else None
        return Checkpoint(
            loop=LoopState(**meta["loop"]),
            model=load_file(path / "model.safetensors"),
            best=best,
            optimizer=_optimizer_state(load_file(path / "optimizer.safetensors"), meta["optimizer"]),
            scheduler=meta["scheduler"],
            rng=load_file(path / "rng.safetensors"),
            python_random=meta["python_random"],
        )
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} is incompatible or corrupt: {exc}") from exc


def restore_training(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> None:
    """Load weights, optimizer and scheduler state (after hooks attached their parametrizations)."""
    try:
        model.load_state_dict(ckpt.model, strict=True)
        optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"checkpoint does not match this model/optimizer: {first}") from exc
    scheduler.load_state_dict(ckpt.scheduler)


def apply_rng(ckpt: Checkpoint, generators: list[torch.Generator]) -> None:
    """Restore every random stream exactly as it was when the checkpoint was written."""
    torch.set_rng_state(ckpt.rng["torch"])
    for i, generator in enumerate(generators):
        generator.set_state(ckpt.rng[f"generator.{i}"])
    random.setstate(_tupled(ckpt.python_random))
