"""Fine-tune a classifier (optionally mask-locked, distilled or pruned) and save it with metrics."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.nn.utils import parametrize

from distilprune.config import to_dict
from distilprune.data.batching import EncodedDataset, class_weights, make_loader, oversample_indices
from distilprune.data.loading import TextTable
from distilprune.distill.objectives import ClassificationObjective
from distilprune.errors import UserError, require, require_at_least
from distilprune.evaluate import (
    classification_metrics,
    plot_confusion_matrix,
    plot_pr_curve,
    predict_logits,
)
from distilprune.io import check_writable, write_json
from distilprune.jobs.common import (
    DataConfig,
    checkpoint_beside,
    encode_table,
    prepare_data,
    run_fingerprint,
    save_model_dir,
    save_on_main_process,
    trained_model_summary,
)
from distilprune.models.loading import (
    check_max_length,
    load_classifier,
    load_tokenizer,
)
from distilprune.prune import (
    LockSparsityHook,
    PruneConfig,
    PruningHook,
    finalize,
    remove_pruned,
)
from distilprune.quantize import QATConfig, QATHook, attach_input_quant, save_qat_params
from distilprune.quantize.qat import QPARAMS_FILENAME
from distilprune.train import Hook, Objective, TrainConfig, save_losses_plot, train


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


ObjectiveFactory = Callable[[EncodedDataset, TextTable], Objective]


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Fail early (before any training) when ``out`` exists and may not be replaced, cannot be
    created at all, or another run is writing it (``out`` stays locked until it is written)."""
    out = Path(out)
    if not str(out):
        raise UserError("an output directory is required (--out)")
    check_writable(out)
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists (pass --overwrite to replace it)")
    return out


def _compression_hooks(cfg: FinetuneConfig) -> list[Hook]:
    """Mask locking (sparse transfer), gradual pruning and/or int8 QAT (applied last)."""
    hooks: list[Hook] = [LockSparsityHook()] if cfg.lock_sparsity else []
    if cfg.prune:
        hooks.append(PruningHook(cfg.prune))
    if cfg.qat:
        hooks.append(QATHook(cfg.qat))
    return hooks


def _finalize_compression(model, cfg: FinetuneConfig) -> dict | None:
    """Bake any mask parametrizations into plain weights (a no-op for dense runs); after
    structured pruning, remove the pruned heads/neurons (returns what was removed)."""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        finalize(model)
    return vars(remove_pruned(model)) if cfg.prune and cfg.prune.method == "structured" else None


def _qat_summary(model, qparams: dict[str, dict], validate: Callable) -> dict[str, Any]:
    """Where the learned scales are kept, and the validation metrics of the fake-quantized model
    (int8 activations too: what a static int8 export computes; ``metrics`` has weights only)."""
    quantized = attach_input_quant(copy.deepcopy(model), qparams).eval()
    inputs = [info for info in qparams.values() if info["input_scale"] is not None]
    return {"qparams": QPARAMS_FILENAME, "layers": len(qparams), "quantized_inputs": len(inputs),
            "activation_dtype": inputs[0]["input_dtype"] if inputs else None,
            "fake_quant_metrics": validate(quantized)}


def finetune(cfg: FinetuneConfig, make_objective: ObjectiveFactory | None = None,
             hooks: Sequence[Hook] = (), metadata: dict[str, Any] | None = None,
             label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; save model, metrics, split and plots to ``cfg.out``.

    ``label_names`` (a teacher's) fix the label ids; by default they come from the training file.
    Token classification and question answering data go to :func:`distilprune.jobs.tasks.finetune_task`.
    """
    if cfg.data.kind != "classification":
        from distilprune.jobs.tasks import finetune_task

        require(make_objective is None, "task distillation of token-classification / QA models runs "
                                        "through distill_task")
        return finetune_task(cfg, hooks=hooks, metadata=metadata, label_names=label_names)
    out = check_output_dir(cfg.out, cfg.overwrite)
    check_max_length(cfg.model, cfg.data.max_length)
    cfg = dataclasses.replace(cfg, train=checkpoint_beside(cfg.train, out))
    data = prepare_data(cfg.data, label_names)
    tokenizer = load_tokenizer(cfg.model)
    names = data.train.label_names
    model = load_classifier(cfg.model, len(names), names)
    train_ds = encode_table(tokenizer, data.train, cfg.data.max_length)
    val_ds = encode_table(tokenizer, data.val, cfg.data.max_length)
    imbalance, labels = cfg.data.imbalance, data.train.labels
    indices = oversample_indices(labels, cfg.train.seed) if imbalance == "oversample" else None
    loader = make_loader(train_ds, tokenizer, cfg.train.batch_size, cfg.train.seed, indices=indices)
    weights = class_weights(labels, len(names)) if imbalance == "class_weights" else None
    objective = make_objective(train_ds, data.train) if make_objective else ClassificationObjective(weights)

    def validate(m) -> dict[str, float]:
        logits = predict_logits(m, val_ds, tokenizer, cfg.eval_batch_size)
        metrics = classification_metrics(data.val.labels, logits)
        return {k: metrics[k] for k in ("accuracy", "f1", "f1_macro")}

    settings = {"config": to_dict(cfg), "metadata": metadata, "labels": label_names}
    compression = _compression_hooks(cfg)
    result = train(model, loader, objective, cfg.train, [*compression, *hooks],
                   validate, description=f"finetune {Path(cfg.model).name}",
                   fingerprint=run_fingerprint(settings, [cfg.data.train, cfg.data.validation]))
    shrink = _finalize_compression(model, cfg)
    logits = predict_logits(model, val_ds, tokenizer, cfg.eval_batch_size)
    metrics = classification_metrics(data.val.labels, logits)
    # learned int8 scales, for a static export; not kept when structured pruning cut channels out
    qparams = None if shrink else next((h.scales for h in compression if isinstance(h, QATHook)), None)
    summary = {
        "kind": "classifier",
        "task": "classification",
        "text_columns": data.train.columns,
        "text_pairs": data.train.pairs is not None,
        "base_model": cfg.model,
        "config": to_dict(cfg),
        "preprocess": cfg.data.preprocess,
        "max_length": cfg.data.max_length,
        "label_names": data.train.label_names,
        "data": {k: v for k, v in data.split.items() if k != "val_ids"},
        "metrics": metrics,
        **trained_model_summary(model, result, shrink),
        **({"qat": _qat_summary(model, qparams, validate)} if qparams else {}),
        **(metadata or {}),
    }
    def write(tmp: Path) -> None:
        save_model_dir(tmp, model, tokenizer, summary)
        if qparams:
            save_qat_params(tmp, qparams)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "split.json", data.split)
        write_json(tmp / "train_log.json", {"history": result.history, "losses": result.losses})
        plot_confusion_matrix(metrics, data.train.label_names, tmp / "confusion_matrix.png")
        if len(names) == 2:
            plot_pr_curve(data.val.labels, logits, tmp / "pr_curve.png")
        if result.losses:
            save_losses_plot(result, tmp / "loss.png")

    save_on_main_process(out, cfg.overwrite, write, cfg.train)
    return summary


def load_any_model(model_dir: str | Path):
    """Load a saved directory with its own head (classifier or masked-LM) for inspection."""
    from distilprune.models.loading import load_for_student

    return load_for_student(str(model_dir))
