"""Fine-tune a classifier (optionally mask-locked, distilled or pruned) and save it with metrics."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distilprune.config import to_dict
from distilprune.data.batching import EncodedDataset, class_weights, make_loader, oversample_indices
from distilprune.data.loading import TextTable
from distilprune.distill.objectives import ClassificationObjective
from distilprune.errors import require
from distilprune.evaluate import (
    classification_metrics,
    plot_confusion_matrix,
    plot_pr_curve,
    predict_logits,
)
from distilprune.io import write_json
from distilprune.jobs.common import (
    check_output_dir,
    checkpoint_beside,
    encode_table,
    prepare_data,
    run_fingerprint,
    save_model_dir,
    save_on_main_process,
    trained_model_summary,
)
from distilprune.jobs.compression import FinetuneConfig, compression_hooks, finalize_compression
from distilprune.models.loading import (
    check_max_length,
    load_classifier,
    load_tokenizer,
    seeded,
)
from distilprune.quantize import QATHook, attach_input_quant, save_qat_params
from distilprune.quantize.qat import QPARAMS_FILENAME
from distilprune.train import Hook, Objective, save_losses_plot, train

ObjectiveFactory = Callable[[EncodedDataset, TextTable], Objective]


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
    with seeded(cfg.train.seed):  # a fresh head: the same for the same seed
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
    compression = compression_hooks(cfg.lock_sparsity, cfg.prune, cfg.qat)
    result = train(model, loader, objective, cfg.train, [*compression, *hooks],
                   validate, description=f"finetune {Path(cfg.model).name}",
                   fingerprint=run_fingerprint(settings, [cfg.data.train, cfg.data.validation]))
    shrink = finalize_compression(model, cfg.prune)
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
