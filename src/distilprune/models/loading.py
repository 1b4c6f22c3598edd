"""Load any model directory distilprune writes, or a Hugging Face checkpoint, with its head:
sequence / token classifiers, extractive QA, masked-LMs; compact (sparse/int8) and structurally
shrunk directories included, for any BERT-class architecture.

The basics every loader shares (config, tokenizer, model facts) live in
:mod:`distilprune.models.base` and are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

import transformers
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from distilprune.errors import UserError, require
from distilprune.formats import is_compact
from distilprune.models.base import (
    AUTO_CLASSES,
    SUPPORTED_ARCHITECTURES,
    check_max_length,
    count_parameters,
    load_config,
    load_pretrained,
    load_tokenizer,
    model_input_names,
    require_weights,
    seeded,
)
from distilprune.models.registry import resolve_model

__all__ = [
    "AUTO_CLASSES",
    "SUPPORTED_ARCHITECTURES",
    "check_max_length",
    "count_parameters",
    "load_classifier",
    "load_config",
    "load_for_student",
    "load_masked_lm",
    "load_task_model",
    "load_tokenizer",
    "model_input_names",
    "require_classifier",
    "require_weights",
    "seeded",
]


def require_classifier(name: str | Path, task: str = "classification") -> None:
    """Refuse a model never trained for ``task`` (see :func:`~distilprune.task.require_trained_head`)."""
    from distilprune.task import require_trained_head

    require_trained_head(name, load_config(name).architectures or [], task)  # type: ignore[arg-type]



def _other_task_head(config: transformers.PretrainedConfig, task: str) -> bool:
    """Whether the checkpoint carries a trained head of another task (dropped when loading)."""
    from distilprune.task import HEADS

    heads = [h for t, h in HEADS.items() if t != task]
    return any(h in a for a in config.architectures or [] for h in heads)


def load_task_model(name: str | Path, task: str = "classification",
                    label_names: list[str] | None = None) -> PreTrainedModel:
    """Load a model with the head of ``task`` (:data:`AUTO_CLASSES`); a fresh head is added when the
    checkpoint has none, or one of another task (a sparse pre-trained encoder, a masked-LM, a
    classifier fine-tuned for NER...). ``label_names`` set the (token) classes."""
    if task == "classification":
        return load_classifier(name, len(label_names) if label_names else 2, label_names)
    require_weights(name)
    config = load_config(name)
    require(not getattr(config, "pruned_heads", None),
            f"{name} is structurally shrunk: {task} supports unshrunk models only")
    if label_names:
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    elif task == "question-answering":
        config.num_labels = 2
    try:
        model = load_pretrained("model", name, AUTO_CLASSES[task].from_pretrained, config=config,
                                ignore_mismatched_sizes=_other_task_head(config, task))
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        raise UserError(f"{name} has a {load_config(name).num_labels}-tag {task} head, so it cannot "
                        f"learn {config.num_labels} tags: fine-tune the encoder it was trained from "
                        "instead") from exc
    return model.float()


def load_classifier(
    name: str | Path,
    num_labels: int = 2,
    label_names: list[str] | None = None,
) -> PreTrainedModel:
    """Load a sequence classifier; a fresh head is added when the checkpoint has none.

    Compact (sparse/int8) directories are rebuilt with their own head; structurally shrunk
    models (``config.pruned_heads``, classifiers or masked-LMs) are rebuilt by
    :func:`distilprune.shrink.load_shrunk`.
    """
    from distilprune.export.storage import load_compact
    from distilprune.task import task_of_model

    if is_compact(path := resolve_model(name)):
        task = task_of_model(path)  # recorded in the directory: refused before its weights are read
        require(task == "classification", f"{name} is a compact {task} model, not a classifier")
        return load_compact(path).float()
    require_weights(name)
    config = load_config(name)
    config.num_labels = num_labels
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    if getattr(config, "pruned_heads", None):
        from distilprune.shrink import load_shrunk

        return load_shrunk(resolve_model(name), config).float()
    try:
        model = load_pretrained("model", name, AutoModelForSequenceClassification.from_pretrained,
                                config=config,
                                ignore_mismatched_sizes=_other_task_head(config, "classification"))
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
            raise
        saved = load_config(name).num_labels
        raise UserError(
            f"{name} has a {saved}-class classification head, so it cannot learn {num_labels} classes: "
            f"fine-tune the encoder it was trained from (a model without a classifier head, e.g. the "
            f"alias or student) with {num_labels} classes instead") from exc
    return model.float()


def load_masked_lm(name: str | Path) -> tuple[PreTrainedModel, bool]:
    """Load a masked-LM model; returns ``(model, head_is_pretrained)``.

    Sentence-transformer checkpoints (our packaged teachers) have no MLM head: it is created
    (dense + LayerNorm, decoder tied to the word embeddings) and must be fitted before use.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    require_weights(name)
    config = load_config(name)
    # XLNet has no masked-LM class; its LM head model predicts every position the same way.
    auto = AutoModelForCausalLM if config.model_type == "xlnet" else AutoModelForMaskedLM
    if getattr(config, "pruned_heads", None):
        from distilprune.shrink import load_shrunk_with_info

        model, missing = load_shrunk_with_info(resolve_model(name), config, auto)
    else:
        model, info = load_pretrained("masked-LM model", name, auto.from_pretrained,
                                      config=config, output_loading_info=True)
        missing = info.get("missing_keys", [])
    base = model.base_model_prefix + "."
    head_missing = any(not k.startswith(base) for k in missing)
    return model.float(), not head_missing


def load_for_student(name: str | Path) -> PreTrainedModel:
    """Load a teacher with the head it was saved with (masked-LM, sequence / token classifier, QA)."""
    from distilprune.task import task_of_config

    config = load_config(name)
    if any("MaskedLM" in a or "LMHead" in a for a in (config.architectures or [])):
        return load_masked_lm(name)[0]
    task = task_of_config(config.to_dict())
    if task != "classification":
        return load_task_model(name, task, [config.id2label[i] for i in range(config.num_labels)]
                               if task == "token-classification" else None)
    return load_classifier(name, num_labels=config.num_labels)
