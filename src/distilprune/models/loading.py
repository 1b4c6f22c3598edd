"""Load tokenizers and task models (sequence / token classifiers, extractive QA) for any
BERT-class architecture."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distilprune.errors import UserError, require
from distilprune.models.registry import resolve_model

SUPPORTED_ARCHITECTURES = ("bert", "roberta", "distilbert", "xlnet", "mpnet")

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("transformers").setLevel(logging.ERROR)


def _load(what: str, name: str | Path, loader, **kwargs):
    path = resolve_model(name)
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {what} from {name}: {first_line}") from exc


def load_tokenizer(name: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of an alias, directory or hub ID; never a stand-in built from nothing."""
    from distilprune.export.runtime import require_tokenizer_files

    path = resolve_model(name)
    if Path(path).is_dir():
        require_tokenizer_files(path)
    tokenizer = _load("tokenizer", name, AutoTokenizer.from_pretrained)
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise UserError(f"the tokenizer of {name} has no vocabulary beyond its special tokens")
    return tokenizer


def load_config(name: str | Path) -> transformers.PretrainedConfig:
    """Load a model config, checking that its architecture is one we handle."""
    config = _load("config", name, AutoConfig.from_pretrained)
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {config.model_type!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def require_weights(name: str | Path) -> None:
    """Refuse a local directory without PyTorch weights before loading it: an ONNX export is named
    as such (transformers would only say that no ``model.safetensors`` was found)."""
    path = Path(resolve_model(name))
    if not path.is_dir() or any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return
    if (path / "model.onnx").is_file():
        raise UserError(f"{name} is an ONNX export (model.onnx, no PyTorch weights): evaluate, predict, "
                        "serve, benchmark and quantize run it; this command needs the model directory "
                        "it was exported from")
    raise UserError(f"{name} holds no model weights (model.safetensors)")


def check_max_length(name: str | Path, max_length: int) -> None:
    """Refuse a ``max_length`` beyond the model's position embeddings before any work (the first
    long text would otherwise fail mid-training)."""
    from distilprune.export.runtime import max_sequence_length

    limit = max_sequence_length(load_config(name).to_dict())
    if limit is not None and max_length > limit:
        raise UserError(f"max_length {max_length} is longer than {name} allows ({limit} tokens)")


def require_classifier(name: str | Path, task: str = "classification") -> None:
    """Refuse a model never trained for ``task`` (a pretrained encoder, a masked-LM): its head
    would be random, and every answer made up."""
    from distilprune.task import HEADS

    kinds = ", ".join(load_config(name).architectures or []) or "no architectures in its config.json"
    if HEADS[task] not in kinds:  # type: ignore[index]
        what = "classifier" if task == "classification" else f"{task} model"
        raise UserError(f"{name} is not a trained {what} ({kinds}): fine-tune it first "
                        f"(distilprune finetune --model {name} ...)")


AUTO_CLASSES = {"classification": AutoModelForSequenceClassification,
                "token-classification": AutoModelForTokenClassification,
                "question-answering": AutoModelForQuestionAnswering}


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
        model = _load("model", name, AUTO_CLASSES[task].from_pretrained, config=config,
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
    from distilprune.export.storage import is_compact, load_compact

    if is_compact(resolve_model(name)):
        return load_compact(resolve_model(name)).float()
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
        model = _load("model", name, AutoModelForSequenceClassification.from_pretrained, config=config,
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


def model_input_names(model: torch.nn.Module) -> set[str]:
    """The keyword arguments the model's ``forward`` accepts (DDP/accelerate wrappers unwrapped)."""
    while hasattr(model, "module"):
        model = model.module
    return set(inspect.signature(model.forward).parameters)


def count_parameters(model: torch.nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters) of ``model``."""
    if nonzero:
        return sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


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
        model, info = _load("masked-LM model", name, auto.from_pretrained,
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
