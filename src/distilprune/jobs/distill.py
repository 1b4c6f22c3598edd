"""DistilBERT-style distillation jobs: student init, MLM-head fitting, general and task distillation.

General distillation (optionally with Prune OFA gradual pruning) trains a masked-LM student on
unlabelled text with the triple loss; task distillation fine-tunes a classifier student on
labelled data against a fine-tuned teacher's cached logits. Both run the one training loop.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from distilprune.config import from_dict, to_dict
from distilprune.data.batching import EncodedDataset, encode, make_loader
from distilprune.data.corpus import default_corpus_files, load_corpus
from distilprune.data.loading import TextTable, file_sha256
from distilprune.distill.losses import check_cos_layers, hidden_layer_pairs
from distilprune.distill.objectives import (
    DynamicMasker,
    MLMDistillationObjective,
    MLMObjective,
    TaskDistillationObjective,
)
from distilprune.errors import UserError, require, require_at_least
from distilprune.evaluate import predict_texts
from distilprune.io import atomic_file, stable_hash, write_json
from distilprune.jobs.common import (
    checkpoint_beside,
    label_names_of,
    run_fingerprint,
    save_model_dir,
    save_on_main_process,
)
from distilprune.jobs.compression import compression_hooks, finalize_compression
from distilprune.jobs.finetune import FinetuneConfig, check_output_dir, finetune
from distilprune.models.loading import (
    check_max_length,
    count_parameters,
    load_classifier,
    load_config,
    load_for_student,
    load_masked_lm,
    load_tokenizer,
    require_classifier,
    seeded,
)
from distilprune.models.registry import cache_dir, resolve_model
from distilprune.models.student import build_student, num_layers_of
from distilprune.progress import progress_bar
from distilprune.prune import (
    PruneConfig,
    sparsity_report,
    write_sparsity_json,
)
from distilprune.reporting.sparsity import plot_sparsity_heatmap
from distilprune.train import TrainConfig, TrainResult, save_losses_plot, train


# ----------------------------------------------------------------------------- student
@dataclass
class StudentConfig:
    """A student initialised from ``teacher``: ``layers`` (default half, every other layer) or an
    explicit ``layer_map`` of teacher layers to copy."""

    teacher: str = ""
    out: str = ""
    layers: int | None = None
    layer_map: list[int] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(bool(self.teacher), "student needs --model (the teacher)")  # layers: build_student


def make_student(cfg: StudentConfig) -> dict[str, Any]:
    """Save a half-depth (or ``layer_map``) student initialised from the teacher's layers."""
    teacher, out, layer_map = cfg.teacher, cfg.out, cfg.layer_map
    check_output_dir(out, cfg.overwrite)
    with seeded(0):  # a head the teacher lacks (MiniLM has none) is the same on every run
        model = load_for_student(teacher)
    student = build_student(model, layer_map, cfg.layers)
    tokenizer = load_tokenizer(teacher)
    summary = {
        "kind": "student", "teacher": teacher,
        "teacher_layers": num_layers_of(model), "student_layers": num_layers_of(student),
        "layer_map": layer_map or "every other",
        "teacher_parameters": count_parameters(model), "parameters": count_parameters(student),
    }
    summary["parameter_ratio"] = summary["parameters"] / summary["teacher_parameters"]
    save_on_main_process(out, cfg.overwrite, lambda tmp: save_model_dir(tmp, student, tokenizer, summary))
    return summary


# ----------------------------------------------------------------------------- corpus
@dataclass
class CorpusConfig:
    """Unlabelled text for masked-LM training (empty ``files`` = the default corpus)."""

    files: list[str] = field(default_factory=list)
    text_column: str | None = None
    min_words: int = 4
    limit: int | None = None
    max_length: int = 128
    heldout: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least("corpus limit", self.limit, 1)
        require_at_least("heldout", self.heldout, 0)
        require_at_least("max_length", self.max_length, 8)


def corpus_texts(cfg: CorpusConfig) -> tuple[list[str], list[str]]:
    """``(train_texts, heldout_texts)``: shuffled with a seed, held-out rows split off."""
    files = cfg.files or default_corpus_files(cache_dir() / "data")
    texts = load_corpus(files, cfg.min_words, None, cfg.text_column)
    random.Random(cfg.seed).shuffle(texts)
    heldout = min(cfg.heldout, len(texts) // 10)
    train_texts = texts[heldout:]
    return (train_texts[: cfg.limit] if cfg.limit else train_texts), texts[:heldout]


@torch.inference_mode()
def masked_accuracy(model, tokenizer, texts: list[str], max_length: int, seed: int = 1234,
                    batch_size: int = 32) -> float | None:
    """Share of masked tokens the masked-LM model predicts exactly (fixed masking seed); ``None``
    without held-out texts (a corpus of fewer than 10 texts, or ``heldout: 0``)."""
    if not texts:
        return None
    model.eval()
    dataset = EncodedDataset(encode(tokenizer, texts, max_length))
    loader = make_loader(dataset, tokenizer, batch_size, shuffle=False)
    masker = DynamicMasker(tokenizer, seed=seed)
    hits = total = 0
    for batch in loader:
        ids, labels = masker(batch["input_ids"])
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        chosen = labels != -100
        hits += int((logits.argmax(-1)[chosen] == labels[chosen]).sum())
        total += int(chosen.sum())
    return hits / max(total, 1)


# ----------------------------------------------------------------------------- MLM head
@dataclass
class MLMHeadConfig:
    """Fit a masked-LM head on a frozen encoder (our packaged teachers ship without one)."""

    teacher: str = ""
    out: str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-3, patience=None))
    overwrite: bool = False


def fit_mlm_head(cfg: MLMHeadConfig) -> dict[str, Any]:
    """Train only the MLM head (dense + LayerNorm + bias; decoder tied to embeddings)."""
    check_output_dir(cfg.out, cfg.overwrite)
    check_max_length(cfg.teacher, cfg.corpus.max_length)
    train_texts, heldout = corpus_texts(cfg.corpus)
    tokenizer = load_tokenizer(cfg.teacher)
    with seeded(cfg.train.seed):  # the head to fit starts the same for the same seed
        model, pretrained_head = load_masked_lm(cfg.teacher)
    before = masked_accuracy(model, tokenizer, heldout, cfg.corpus.max_length)
    base = model.base_model
    for param in base.parameters():
        param.requires_grad_(False)
    dataset = EncodedDataset(encode(tokenizer, train_texts, cfg.corpus.max_length))
    loader = make_loader(dataset, tokenizer, cfg.train.batch_size, cfg.train.seed)
    objective = MLMObjective(DynamicMasker(tokenizer, seed=cfg.train.seed))
    result = train(model, loader, objective, cfg.train, description="fit-mlm-head",
                   fingerprint=run_fingerprint(to_dict(cfg), cfg.corpus.files))
    for param in base.parameters():
        param.requires_grad_(True)
    after = masked_accuracy(model, tokenizer, heldout, cfg.corpus.max_length)
    summary = {"kind": "masked-lm", "base_model": cfg.teacher, "head_was_pretrained": pretrained_head,
               "masked_accuracy_before": before, "masked_accuracy": after,
               "corpus_texts": len(train_texts), "heldout_texts": len(heldout),
               "config": to_dict(cfg), "train": {"steps": result.steps, "seconds": round(result.seconds, 1)}}

    def write(tmp: Path) -> None:
        save_model_dir(tmp, model, tokenizer, summary)
        save_losses_plot(result, tmp / "loss.png", "MLM head fitting")

    save_on_main_process(cfg.out, cfg.overwrite, write, cfg.train)
    return summary


# ----------------------------------------------------------------------------- general distillation
@dataclass
class DistillLoss:
    """DistilBERT's triple loss weights (α·CE, β·MLM, γ·cosine) and temperature, plus an optional
    hidden-state MSE (TinyBERT) on the same layers as the cosine."""

    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    alpha_mse: float = 0.0
    temperature: float = 2.0
    mlm_probability: float = 0.15
    restrict_ce_to_mask: bool = False
    cos_layers: str = "last"  # "all": every student layer against its mapped teacher layer

    def __post_init__(self) -> None:
        check_cos_layers(self.cos_layers)
        check_loss_weights(self.temperature, alpha_ce=self.alpha_ce, alpha_mlm=self.alpha_mlm,
                           alpha_cos=self.alpha_cos, alpha_mse=self.alpha_mse)
        require(0 < self.mlm_probability < 1,
                f"mlm_probability must be between 0 and 1, got {self.mlm_probability:g}")


def check_loss_weights(temperature: float, **alphas: float) -> None:
    """A positive temperature and non-negative loss weights, not all zero (nothing to learn)."""
    require_at_least("temperature", temperature, 0, strict=True)
    for name, value in alphas.items():
        require_at_least(name, value, 0)
    require(sum(alphas.values()) > 0, f"the loss weights {', '.join(alphas)} are all 0: nothing to train")


@dataclass
class GeneralDistillConfig:
    """Masked-LM distillation of a student (half the teacher's layers by default)."""

    teacher: str = ""
    out: str = ""
    student: str | None = None
    student_layers: int | None = None
    layer_map: list[int] | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    loss: DistillLoss = field(default_factory=DistillLoss)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=2e-4, patience=None))
    prune: PruneConfig | None = None
    lock_sparsity: bool = False  # keep the zeros of a sparse --student zero (continued pre-training)
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(not self.lock_sparsity or self.student,
                "lock_sparsity keeps the zeros of an existing sparse student: give --student")


def general_distill(cfg: GeneralDistillConfig) -> dict[str, Any]:
    """Distil the masked-LM teacher into a student; prune during it when ``cfg.prune`` is set
    (structured: the pruned heads/neurons are then removed from the saved student)."""
    out = check_output_dir(cfg.out, cfg.overwrite)
    for model in filter(None, (cfg.teacher, cfg.student)):
        check_max_length(model, cfg.corpus.max_length)
    cfg = dataclasses.replace(cfg, train=checkpoint_beside(cfg.train, out))
    train_texts, heldout = corpus_texts(cfg.corpus)
    tokenizer = load_tokenizer(cfg.teacher)
    teacher, pretrained_head = load_masked_lm(cfg.teacher)
    require(pretrained_head, f"{cfg.teacher} has no fitted MLM head: run `distilprune fit-mlm-head` first")
    with seeded(cfg.train.seed):
        student = (load_masked_lm(cfg.student)[0] if cfg.student
                   else build_student(teacher, cfg.layer_map, cfg.student_layers))
    dataset = EncodedDataset(encode(tokenizer, train_texts, cfg.corpus.max_length))
    loader = make_loader(dataset, tokenizer, cfg.train.batch_size, cfg.train.seed)
    objective = MLMDistillationObjective(
        teacher, DynamicMasker(tokenizer, cfg.loss.mlm_probability, cfg.train.seed),
        alpha_ce=cfg.loss.alpha_ce, alpha_mlm=cfg.loss.alpha_mlm, alpha_cos=cfg.loss.alpha_cos,
        temperature=cfg.loss.temperature, restrict_ce_to_mask=cfg.loss.restrict_ce_to_mask,
        hidden_pairs=hidden_layer_pairs(num_layers_of(student), num_layers_of(teacher), cfg.loss.cos_layers),
        alpha_mse=cfg.loss.alpha_mse,
    )
    hooks = compression_hooks(cfg.lock_sparsity, cfg.prune)
    result = train(student, loader, objective, cfg.train, hooks, description="distill",
                   fingerprint=run_fingerprint(to_dict(cfg), cfg.corpus.files))
    shrink = finalize_compression(student, cfg.prune)
    return _save_general(cfg, student, teacher, tokenizer, heldout, result, len(train_texts), shrink)


def _save_general(cfg: GeneralDistillConfig, student, teacher, tokenizer, heldout: list[str],
                  result: TrainResult, n_texts: int, shrink: dict | None = None) -> dict[str, Any]:
    report = sparsity_report(student)
    summary = {
        "kind": "masked-lm", "teacher": cfg.teacher, "config": to_dict(cfg),
        "parameters": count_parameters(student), "teacher_parameters": count_parameters(teacher),
        "nonzero_parameters": count_parameters(student, nonzero=True),
        "sparsity": report["prunable"]["sparsity"], "corpus_texts": n_texts,
        "masked_accuracy": masked_accuracy(student, tokenizer, heldout, cfg.corpus.max_length),
        "teacher_masked_accuracy": masked_accuracy(teacher, tokenizer, heldout, cfg.corpus.max_length),
        "train": {"steps": result.steps, "seconds": round(result.seconds, 1)},
        **({"shrink": shrink} if shrink else {}),
    }
    def write(tmp: Path) -> None:
        save_model_dir(tmp, student, tokenizer, summary)
        write_json(tmp / "train_log.json", {"losses": result.losses})
        save_losses_plot(result, tmp / "loss.png", "general distillation")
        if cfg.prune or cfg.lock_sparsity:
            write_sparsity_json(report, tmp / "sparsity.json")
            plot_sparsity_heatmap(report, tmp / "sparsity.png")

    save_on_main_process(cfg.out, cfg.overwrite, write, cfg.train)
    return summary


# ----------------------------------------------------------------------------- task distillation
@dataclass
class TaskLoss:
    """Task distillation weights: soft targets at temperature T, hard labels, hidden cosine."""

    temperature: float = 2.0
    alpha_soft: float = 0.5
    alpha_hard: float = 0.5
    alpha_cos: float = 0.0
    cos_layers: str = "last"  # "all": every student layer against its mapped teacher layer

    def __post_init__(self) -> None:
        check_cos_layers(self.cos_layers)
        check_loss_weights(self.temperature, alpha_soft=self.alpha_soft, alpha_hard=self.alpha_hard,
                           alpha_cos=self.alpha_cos)


@dataclass
class TaskDistillConfig:
    """Fine-tune a student against a fine-tuned teacher's (cached) logits."""

    teacher: str = ""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    loss: TaskLoss = field(default_factory=TaskLoss)


TASK_DISTILLATION = ("teacher", "loss")  # a finetune's settings beside FinetuneConfig's


def task_distillation_settings(settings: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finetune's settings (the command's recipe section and flags, or a stage of a stage graph)
    split into :class:`FinetuneConfig`'s and :func:`task_finetune`'s ``teacher`` / ``loss``."""
    settings = dict(settings)
    extra = {key: settings.pop(key) for key in TASK_DISTILLATION if key in settings}
    if "loss" in extra:
        require(extra.get("teacher") is not None, f"{where}.loss: task distillation needs a teacher")
        extra["loss"] = from_dict(TaskLoss, extra["loss"] or {}, f"{where}.loss")
    return settings, extra


def task_finetune(cfg: FinetuneConfig, teacher: str | Path | None = None,
                  loss: TaskLoss | None = None) -> dict[str, Any]:
    """Fine-tune with ``cfg``: on the labels alone, or task-distilled from ``teacher`` (``loss``)."""
    if teacher is None:
        return finetune(cfg)
    return distill_task(TaskDistillConfig(teacher=str(teacher), finetune=cfg, loss=loss or TaskLoss()))


def teacher_logits(teacher_dir: str, texts: list[str], max_length: int,
                   pairs: list[str] | None = None) -> torch.Tensor:
    """The teacher's logits for ``texts`` (or text pairs, ``pairs`` the second texts), cached on disk
    (safetensors) by weights + data hash."""
    weights = sorted(Path(resolve_model(teacher_dir)).glob("*.safetensors"))
    require(weights, f"teacher {teacher_dir} has no safetensors weights")
    key = stable_hash({"weights": [file_sha256(w) for w in weights], "texts": texts,
                       "max_length": max_length, **({"pairs": pairs} if pairs is not None else {})})
    path = cache_dir() / "teacher_logits" / f"{key}.safetensors"
    if path.is_file():
        return load_file(path)["logits"]
    tokenizer = load_tokenizer(teacher_dir)
    model = load_classifier(teacher_dir, num_labels=_num_labels(teacher_dir))
    with progress_bar(len(texts), "teacher logits") as bar:
        logits = torch.from_numpy(predict_texts(model, tokenizer, texts, max_length, bar=bar, pairs=pairs))
    with atomic_file(path, "wb") as handle:
        handle.write(save({"logits": logits.contiguous()}))
    return logits


def _num_labels(model_dir: str) -> int:
    return int(load_config(model_dir).num_labels)


def _num_layers(model_dir: str) -> int:
    return int(load_config(model_dir).num_hidden_layers)


def distill_task(cfg: TaskDistillConfig) -> dict[str, Any]:
    """Task distillation = the fine-tuning job with a distillation objective (token classification
    and QA: per-token / per-position soft targets of a teacher of the same task)."""
    require(cfg.teacher, "task distillation needs --teacher (a fine-tuned classifier directory)")
    if (task := cfg.finetune.data.kind) != "classification":
        from distilprune.jobs.tasks import finetune_task

        require(cfg.loss.alpha_cos == 0, f"the hidden-state cosine term is for classifiers, not {task}")
        require_classifier(cfg.teacher, task)
        return finetune_task(cfg.finetune, metadata={"distillation": {"teacher": cfg.teacher,
                                                                      **to_dict(cfg.loss)}},
                             label_names=label_names_of(cfg.teacher) if task == "token-classification"
                             else None, teacher=cfg.teacher, loss=cfg.loss)
    require_classifier(cfg.teacher)  # a random head's soft targets would teach nothing
    teacher_model = None
    if cfg.loss.alpha_cos > 0:
        teacher_model = load_classifier(cfg.teacher, num_labels=_num_labels(cfg.teacher)).eval()

    def objective(train_ds: EncodedDataset, table: TextTable) -> TaskDistillationObjective:
        logits = teacher_logits(cfg.teacher, table.texts, cfg.finetune.data.max_length, table.pairs)
        if len(logits) != len(train_ds):
            raise UserError("cached teacher logits do not match the training set")
        pairs = (hidden_layer_pairs(_num_layers(cfg.finetune.model), num_layers_of(teacher_model),
                                    cfg.loss.cos_layers) if teacher_model is not None else None)
        return TaskDistillationObjective(logits, cfg.loss.temperature, cfg.loss.alpha_soft,
                                         cfg.loss.alpha_hard, cfg.loss.alpha_cos, teacher_model,
                                         hidden_pairs=pairs)

    return finetune(cfg.finetune, make_objective=objective,
                    metadata={"distillation": {"teacher": cfg.teacher, **to_dict(cfg.loss)}},
                    label_names=label_names_of(cfg.teacher))


__all__ = [
    "CorpusConfig", "DistillLoss", "GeneralDistillConfig", "MLMHeadConfig", "StudentConfig",
    "TASK_DISTILLATION", "TaskDistillConfig", "TaskLoss", "distill_task", "fit_mlm_head",
    "general_distill", "make_student", "masked_accuracy", "task_distillation_settings", "task_finetune",
    "teacher_logits",
]
