"""Pieces shared by the jobs: dataset preparation, run metadata and model saving."""

from __future__ import annotations

import dataclasses
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distilprune import __version__
from distilprune.data.batching import EncodedDataset, encode
from distilprune.data.loading import TextTable, class_balance, file_sha256, load_table
from distilprune.data.preprocess import build_preprocessor, parse_steps
from distilprune.data.split import stratified_split
from distilprune.errors import UserError, require, require_at_least
from distilprune.io import atomic_dir, check_writable, discard, stable_hash, sweep_stale, write_json
from distilprune.jobs.staging import file_digests, hashable
from distilprune.metadata import METADATA_FILE, read_metadata, trained_label_names


@dataclass
class DataConfig:
    """Where the labelled data is and how it is read, split and preprocessed.

    ``task`` overrides the kind found from the training file (:mod:`distilprune.task`);
    ``num_labels`` (default: the classes found in the training file) fixes a classifier's width;
    ``limit`` samples N training rows (sentences, questions), ``val_limit`` keeps the first N
    validation rows. Question answering: contexts longer than ``max_length`` are read in windows
    overlapping by ``doc_stride`` tokens (default: a quarter of ``max_length``); answers are decoded
    from the ``n_best`` start and end positions, at most ``max_answer_length`` tokens long.
    """

    train: str = ""
    validation: str | None = None
    task: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    val_fraction: float = 0.15
    split_seed: int = 42
    preprocess: list[str] = field(default_factory=list)
    max_length: int = 128
    num_labels: int | None = None
    imbalance: str = "none"
    limit: int | None = None
    val_limit: int | None = None
    doc_stride: int | None = None
    max_answer_length: int = 30
    n_best: int = 20

    def __post_init__(self) -> None:
        from distilprune.task import parse_task

        require(self.imbalance in ("none", "class_weights", "oversample"),
                f"imbalance must be none, class_weights or oversample, got {self.imbalance!r}")
        require(self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}")
        require(0 < self.val_fraction < 1, f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        require_at_least("split_seed", self.split_seed, 0)
        require_at_least("num_labels", self.num_labels, 2)
        require_at_least("limit", self.limit, 1)
        require_at_least("val_limit", self.val_limit, 1)
        for name in ("doc_stride", "max_answer_length", "n_best"):
            require_at_least(name, getattr(self, name), 1)
        self.task = parse_task(self.task)
        self.preprocess = parse_steps(self.preprocess)

    @property
    def stride(self) -> int:
        """The QA windows' overlap in tokens (``doc_stride``, default a quarter of ``max_length``)."""
        return self.doc_stride or max(1, self.max_length // 4)

    @property
    def kind(self) -> str:
        """The task of the training data (``task``, else found from the file)."""
        from distilprune.task import task_of_data

        return task_of_data(self.train, self.task)


@dataclass
class PreparedData:
    """Train/validation tables after splitting and preprocessing."""

    train: TextTable
    val: TextTable
    split: dict[str, Any]


def preprocess_table(table: TextTable, steps: list[str]) -> TextTable:
    """Apply the named preprocessing steps to every text (records carry keyword/location)."""
    if not steps:
        return table
    fn = build_preprocessor(steps)
    records = table.extras or [{} for _ in table.texts]
    table.texts = [fn(text, record) for text, record in zip(table.texts, records, strict=True)]
    if table.pairs is not None:
        table.pairs = [fn(text, record) for text, record in zip(table.pairs, records, strict=True)]
    return table


def require_classes(table: TextTable) -> None:
    """Refuse training labels that hold a single class (nothing to learn, metrics meaningless)."""
    present = sorted(set(table.labels or []))
    require(len(present) > 1, f"{table.source}: every label is {table.label_names[present[0]]!r}; "
                              "a classifier needs at least two classes")


def prepare_data(cfg: DataConfig, label_names: Sequence[str] | None = None) -> PreparedData:
    """Load, split (stratified, seeded) and preprocess the training data.

    ``label_names`` (e.g. a teacher's) fix the label ids; the validation file always maps through
    the training labels, so a file holding a subset of the classes keeps their ids.
    """
    full = load_table(cfg.train, cfg.text_column, cfg.label_column, num_labels=cfg.num_labels,
                      label_names=label_names, text_pair_column=cfg.text_pair_column)
    require_classes(full)
    if cfg.validation:
        train = full
        val = load_table(cfg.validation, cfg.text_column, cfg.label_column, num_labels=cfg.num_labels,
                         label_names=full.label_names, text_pair_column=cfg.text_pair_column,
                         pairs=full.pairs is not None)
        split = {"mode": "file", "validation": cfg.validation, "validation_sha256": val.sha256}
    else:
        train_idx, val_idx = stratified_split(full.labels, cfg.val_fraction, cfg.split_seed)
        train, val = full.subset(train_idx), full.subset(val_idx)
        split = {"mode": "stratified", "val_fraction": cfg.val_fraction, "seed": cfg.split_seed,
                 "val_ids": val.ids}
    if cfg.limit and cfg.limit < len(train):
        keep = sorted(random.Random(cfg.split_seed).sample(range(len(train)), cfg.limit))
        train = train.subset(keep)
    if cfg.val_limit and cfg.val_limit < len(val):
        val = val.subset(list(range(cfg.val_limit)))
    require(len(train) > 0 and len(val) > 0, "not enough data to train and validate")
    split.update(train_sha256=full.sha256, n_train=len(train), n_val=len(val),
                 class_balance_train=class_balance(train.labels, train.label_names),
                 class_balance_val=class_balance(val.labels, val.label_names))
    return PreparedData(preprocess_table(train, cfg.preprocess), preprocess_table(val, cfg.preprocess), split)


def encode_table(tokenizer: PreTrainedTokenizerBase, table: TextTable, max_length: int) -> EncodedDataset:
    """Tokenise a table (texts or text pairs) into an :class:`EncodedDataset` (labels kept when
    present)."""
    return EncodedDataset(encode(tokenizer, table.texts, max_length, table.pairs), table.labels)


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    return {
        "distilprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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


def save_on_main_process(out: str | Path, overwrite: bool, write: Callable[[Path], None],
                         train_cfg: Any = None) -> None:
    """``write(tmp)`` into an atomic ``out`` on the main process only; every process waits for it.

    Under torchrun / accelerate launch every process holds the same model: one writes it, and
    none returns before it is on disk (a pipeline's next stage reads it in every process). The
    run's checkpoint (``train_cfg``) is dropped just before the rename: a run killed after it
    leaves a complete output and nothing to resume, one killed before it restarts identically.
    """
    state = PartialState()
    if state.is_main_process:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write(tmp)
            if train_cfg is not None:
                drop_checkpoint(train_cfg)
    state.wait_for_everyone()


def save_model_dir(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   metadata: dict[str, Any]) -> None:
    """``save_pretrained`` (safetensors) + tokenizer + ``distilprune.json`` into ``out``."""
    from distilprune.reporting.modelcard import write_model_card

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json(out / METADATA_FILE, {**metadata, "environment": environment()})
    write_model_card(out, metadata.get("metrics"))  # metrics of these very weights (finetune)


def label_names_of(model: str | Path) -> list[str] | None:
    """:func:`trained_label_names` of a model directory, alias or ONNX export (``None`` if unknown)."""
    from distilprune.export.runtime import read_config
    from distilprune.models.registry import resolve_model

    path = Path(resolve_model(model))
    if not path.is_dir():
        return None
    return trained_label_names(read_metadata(path), read_config(path).get("id2label") or {})


def data_digests(data: DataConfig) -> list[str]:
    """SHA-256 of the training (and validation) files: what a staged result depends on."""
    return file_digests([data.train, *([data.validation] if data.validation else [])], "data file")


def run_fingerprint(settings: Any, files: Sequence[str | None]) -> str:
    """What a checkpoint must match to be resumed: a run's settings (less where / how it runs,
    :data:`~distilprune.jobs.staging.UNHASHED`) and the digests of its input files."""
    return stable_hash({"settings": hashable(settings),
                        "files": [file_sha256(Path(f)) for f in files if f and Path(f).is_file()]})


def checkpoint_beside(train_cfg: Any, out: Path) -> Any:
    """A copy of ``train_cfg`` whose checkpoint directory defaults to ``<out>.checkpoint``."""
    if train_cfg.checkpoint_every and not train_cfg.checkpoint_dir:
        return dataclasses.replace(train_cfg, checkpoint_dir=str(out.with_name(out.name + ".checkpoint")))
    return train_cfg


def drop_checkpoint(train_cfg: Any) -> None:
    """Remove a finished run's checkpoint directory (its output is saved) and what killed saves of
    it left beside it."""
    if train_cfg.checkpoint_dir:
        sweep_stale(train_cfg.checkpoint_dir)
        discard(train_cfg.checkpoint_dir)


def trained_model_summary(model: Any, result: Any, shrink: dict | None = None) -> dict[str, Any]:
    """The saved-model summary fields every training job records: parameter counts, sparsity of
    the prunable weights, the loop's steps/seconds/best, and what ``shrink`` removed."""
    from distilprune.models.loading import count_parameters
    from distilprune.prune import sparsity_report

    return {"parameters": count_parameters(model),
            "nonzero_parameters": count_parameters(model, nonzero=True),
            "sparsity": sparsity_report(model)["prunable"]["sparsity"],
            "train": {"steps": result.steps, "seconds": round(result.seconds, 1), "best": result.best},
            **({"shrink": shrink} if shrink else {})}
