"""What every model loader shares: a model's config and tokenizer (aliases, directories, hub
IDs), refusing weightless directories, and facts about a loaded model (its forward's inputs,
parameter counts).

Loaders of saved model directories (:mod:`distilprune.models.loading`), structural shrinking
(:mod:`distilprune.shrink`) and the compact / sparse storage formats all build on this module,
which imports none of them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from distilprune.data.batching import TARGETS
from distilprune.errors import UserError
from distilprune.models.registry import resolve_model

SUPPORTED_ARCHITECTURES = ("bert", "roberta", "distilbert", "xlnet", "mpnet")
AUTO_CLASSES = {"classification": AutoModelForSequenceClassification,
                "token-classification": AutoModelForTokenClassification,
                "question-answering": AutoModelForQuestionAnswering}

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("transformers").setLevel(logging.ERROR)


def auto_class_of(path: str | Path) -> type:
    """The transformers Auto class of the task a saved model directory holds (its head)."""
    from distilprune.task import task_of_model

    return AUTO_CLASSES[task_of_model(path)]


def load_pretrained(what: str, name: str | Path, loader: Callable[..., Any], **kwargs: Any) -> Any:
    """``loader(path, **kwargs)`` for the alias, directory or hub ID ``name``; a failure to load
    is a one-line :class:`UserError` naming ``what``."""
    path = resolve_model(name)
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {what} from {name}: {first_line}") from exc


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's RNG seeded, restoring the caller's RNG afterwards: a head that
    loading initialises afresh (a checkpoint without it) is then the same for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_tokenizer(name: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of an alias, directory or hub ID; never a stand-in built from nothing."""
    from distilprune.export.runtime import require_tokenizer_files

    path = resolve_model(name)
    if Path(path).is_dir():
        require_tokenizer_files(path)
    tokenizer = load_pretrained("tokenizer", name, AutoTokenizer.from_pretrained)
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise UserError(f"the tokenizer of {name} has no vocabulary beyond its special tokens")
    return tokenizer


def load_config(name: str | Path) -> transformers.PretrainedConfig:
    """Load a model config, checking that its architecture is one we handle."""
    config = load_pretrained("config", name, AutoConfig.from_pretrained)
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


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop batch entries the model's forward does not accept (and the targets: labels, QA positions)."""
    accepted = model_input_names(model)
    return {k: v for k, v in batch.items() if k in accepted and k not in TARGETS}
