"""Token classification (NER) and extractive question answering through the same pipeline as
classification: fine-tune (mask-locked, pruned, QAT, task-distilled from a fine-tuned teacher of the
same task), evaluate and predict. Data, alignment and scores come from :mod:`distilprune.tasks`;
models run through :mod:`distilprune.task_runtime` (PyTorch or ONNX alike)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilprune.config import to_dict
from distilprune.data.batching import EncodedDataset, make_loader
from distilprune.data.loading import file_sha256
from distilprune.distill.objectives import QuestionAnsweringObjective, TokenClassificationObjective
from distilprune.errors import require
from distilprune.io import atomic_dir, check_writable, write_json
from distilprune.jobs.common import (
    DataConfig,
    check_output_dir,
    checkpoint_beside,
    run_fingerprint,
    save_model_dir,
    save_on_main_process,
    trained_model_summary,
)
from distilprune.jobs.compression import FinetuneConfig, compression_hooks, finalize_compression
from distilprune.models.loading import (
    check_max_length,
    load_task_model,
    load_tokenizer,
    require_classifier,
    seeded,
)
from distilprune.task import Task
from distilprune.task_runtime import SpanReader, TokenTagger, load_task_runner, make_runner, torch_forward
from distilprune.train import Hook, save_losses_plot, train

SCALARS = {"token-classification": ("f1", "precision", "recall"),
           "question-answering": ("f1", "exact_match")}


@dataclass
class TaskData:
    """Training features, the validation rows and what the model needs to score them."""

    task: Task
    train: EncodedDataset
    val: list  # Sentences (NER) or QAExamples (QA)
    labels: list[str] | None
    split: dict[str, Any]


# ----------------------------------------------------------------------------- data
def read_rows(task: Task, path: str | Path) -> list:
    """The labelled sentences (NER, CoNLL) or questions (QA, SQuAD JSON) of a file."""
    from distilprune.tasks import ner, qa

    if task == "token-classification":
        return ner.read_conll(path)
    return qa.read_squad(path, require_answers=True)


def _split(task: Task, rows: list, cfg: DataConfig) -> tuple[list, list, dict[str, Any]]:
    """Train/validation rows: the validation file, else a seeded split (QA: by article, so no
    context is seen in both)."""
    if cfg.validation:
        val = read_rows(task, cfg.validation)
        return rows, val, {"mode": "file", "validation": cfg.validation,
                           "validation_sha256": file_sha256(Path(cfg.validation))}
    if task == "question-answering":
        from distilprune.tasks import qa

        train, val = qa.split_by_article(rows, cfg.val_fraction, cfg.split_seed)
        return train, val, {"mode": "by_article", "val_fraction": cfg.val_fraction, "seed": cfg.split_seed}
    order = list(range(len(rows)))
    random.Random(cfg.split_seed).shuffle(order)
    n_val = max(1, round(cfg.val_fraction * len(rows)))
    val_ids = sorted(order[:n_val])
    chosen = set(val_ids)
    return ([r for i, r in enumerate(rows) if i not in chosen], [rows[i] for i in val_ids],
            {"mode": "random", "val_fraction": cfg.val_fraction, "seed": cfg.split_seed, "val_rows": val_ids})


def prepare_task_data(task: Task, cfg: DataConfig, tokenizer: Any,
                      label_names: Sequence[str] | None = None) -> TaskData:
    """Read, split, limit and encode NER sentences / QA examples (labels: ``label_names``, a
    teacher's, else the training file's)."""
    from distilprune.tasks import ner, qa

    train, val, split = _split(task, read_rows(task, cfg.train), cfg)
    if cfg.limit and cfg.limit < len(train):
        keep = sorted(random.Random(cfg.split_seed).sample(range(len(train)), cfg.limit))
        train = [train[i] for i in keep]
    val = val[:cfg.val_limit] if cfg.val_limit else val
    require(len(train) > 0 and len(val) > 0, "not enough data to train and validate")
    split.update(train_sha256=file_sha256(Path(cfg.train)), n_train=len(train), n_val=len(val))
    if task == "token-classification":
        labels = list(label_names) if label_names else ner.label_list(train)
        enc = ner.encode(train, tokenizer, cfg.max_length, {name: i for i, name in enumerate(labels)})
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return TaskData(task, EncodedDataset(inputs, enc["labels"]), val, labels, split)
    features = qa.prepare_train_features(train, tokenizer, cfg.max_length, cfg.stride)
    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
    targets = {k: features[k] for k in ("start_positions", "end_positions")}
    split["n_train_windows"] = len(features["input_ids"])
    return TaskData(task, EncodedDataset(inputs, targets=targets), val, None, split)


# ----------------------------------------------------------------------------- scoring
def score(task: Task, runner: TokenTagger | SpanReader, rows: list) -> tuple[dict[str, Any], Any]:
    """``(metrics, predictions)`` of a tagger on gold sentences (entity P/R/F1 + per type) or of a
    reader on SQuAD examples (exact match, F1)."""
    from distilprune.tasks import ner, qa

    if task == "token-classification":
        assert isinstance(runner, TokenTagger)
        predicted = runner.tag([s.tokens for s in rows])
        metrics = ner.entity_scores([s.tags for s in rows], predicted)
        return {**metrics, "n": len(rows)}, predicted
    assert isinstance(runner, SpanReader)
    answers = runner.answer(rows)
    return {**qa.squad_scores(answers, rows), "n": len(rows)}, answers


def _runner(model: Any, tokenizer: Any, task: Task, cfg: DataConfig, labels: list[str] | None,
            batch_size: int) -> TokenTagger | SpanReader:
    forward, accepted = torch_forward(model, task)
    names = [n for n in tokenizer.model_input_names if n in accepted]
    return make_runner(forward, tokenizer, names, task, inference_settings(cfg), labels, batch_size)


def inference_settings(cfg: DataConfig) -> dict[str, int]:
    """What a saved model's runner needs to read inputs as in training (kept in distilprune.json)."""
    return {"max_length": cfg.max_length, "doc_stride": cfg.stride, "n_best": cfg.n_best,
            "max_answer_length": cfg.max_answer_length}


def entity_table(metrics: dict[str, Any]) -> str:
    """The per-type precision / recall / F1 table (markdown) of NER metrics, overall last."""
    rows = ["| type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in [*metrics["per_type"].items(), ("**overall**", metrics)]:
        rows.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                    f"{m['support']} |")
    return "\n".join(rows) + "\n"


def _write_metrics(folder: Path, task: Task, metrics: dict[str, Any]) -> None:
    write_json(folder / "metrics.json", metrics)
    if task == "token-classification":
        (folder / "entities.md").write_text(entity_table(metrics))


# ----------------------------------------------------------------------------- fine-tuning
def _teacher_model(teacher: str, task: Task, student: str, labels: list[str] | None) -> Any:
    """The fine-tuned teacher of ``task`` (eval mode); it must tokenize like the student (the soft
    targets are per token / position) and, for NER, share its labels."""
    require_classifier(teacher, task)
    teacher_tok, student_tok = load_tokenizer(teacher), load_tokenizer(student)
    require(teacher_tok.get_vocab() == student_tok.get_vocab(),
            f"teacher {teacher} and student {student} have different vocabularies: per-token "
            "distillation needs the same tokenizer")
    return load_task_model(teacher, task, labels).eval()


def _objective(task: Task, teacher: Any, loss: Any) -> Callable:
    cls = TokenClassificationObjective if task == "token-classification" else QuestionAnsweringObjective
    if teacher is None:
        return cls()
    return cls(teacher, loss.temperature, loss.alpha_soft, loss.alpha_hard)


def finetune_task(cfg: FinetuneConfig, hooks: Sequence[Hook] = (), metadata: dict[str, Any] | None = None,
                  label_names: Sequence[str] | None = None, teacher: str | None = None,
                  loss: Any = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` for NER or QA (:func:`distilprune.jobs.finetune.finetune`'s twin); with
    ``teacher`` (a fine-tuned model of the same task) and ``loss`` (a ``TaskLoss``), task-distilled."""
    task: Task = cfg.data.kind  # type: ignore[assignment]
    out = check_output_dir(cfg.out, cfg.overwrite)
    check_max_length(cfg.model, cfg.data.max_length)
    train_cfg = checkpoint_beside(cfg.train, out)
    if train_cfg.select_metric == "accuracy":
        train_cfg = dataclasses.replace(train_cfg, select_metric="f1")
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_task_data(task, cfg.data, tokenizer, label_names)
    with seeded(train_cfg.seed):  # a fresh head: the same for the same seed
        model = load_task_model(cfg.model, task, data.labels)
    teacher_model = _teacher_model(teacher, task, cfg.model, data.labels) if teacher else None
    loader = make_loader(data.train, tokenizer, train_cfg.batch_size, train_cfg.seed)

    def validate(m) -> dict[str, float]:
        metrics, _ = score(task, _runner(m, tokenizer, task, cfg.data, data.labels, cfg.eval_batch_size),
                           data.val)
        return {k: float(metrics[k]) for k in SCALARS[task]}

    settings = {"config": to_dict(cfg), "metadata": metadata, "labels": data.labels, "teacher": teacher}
    result = train(model, loader, _objective(task, teacher_model, loss), train_cfg,
                   [*compression_hooks(cfg.lock_sparsity, cfg.prune, cfg.qat), *hooks], validate,
                   description=f"finetune {Path(cfg.model).name}",
                   fingerprint=run_fingerprint(settings, [cfg.data.train, cfg.data.validation]))
    shrink = finalize_compression(model, cfg.prune)
    metrics, _ = score(task, _runner(model, tokenizer, task, cfg.data, data.labels, cfg.eval_batch_size),
                       data.val)
    summary = _summary(cfg, task, data, metrics, model, result, shrink, metadata)

    def write(tmp: Path) -> None:
        save_model_dir(tmp, model, tokenizer, summary)
        _write_metrics(tmp, task, metrics)
        write_json(tmp / "split.json", data.split)
        write_json(tmp / "train_log.json", {"history": result.history, "losses": result.losses})
        if result.losses:
            save_losses_plot(result, tmp / "loss.png")

    save_on_main_process(out, cfg.overwrite, write, train_cfg)
    return summary


def _summary(cfg: FinetuneConfig, task: Task, data: TaskData, metrics: dict[str, Any], model: Any,
             result: Any, shrink: dict | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "kind": task,
        "task": task,
        "base_model": cfg.model,
        "config": to_dict(cfg),
        "max_length": cfg.data.max_length,
        **(inference_settings(cfg.data) if task == "question-answering" else {}),
        "label_names": data.labels,
        "data": {k: v for k, v in data.split.items() if k != "val_rows"},
        "metrics": metrics,
        **trained_model_summary(model, result, shrink),
        **(metadata or {}),
    }


# ----------------------------------------------------------------------------- evaluate / predict
def evaluate_task(model_dir: str | Path, task: Task, data: str | Path, out: Path, overwrite: bool = True,
                  engine: str = "auto") -> dict[str, Any]:
    """Entity P/R/F1 with a per-type table (NER) or exact match / F1 (QA) of a saved model or ONNX
    export on a labelled file; writes ``metrics.json`` (+ ``entities.md`` / ``predictions.json``)."""
    from distilprune.models.registry import resolve_model

    runner = load_task_runner(resolve_model(model_dir), engine=engine)
    rows = read_rows(task, data)
    metrics, predictions = score(task, runner, rows)
    metrics.update(data=str(data), task=task)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_metrics(tmp, task, metrics)
        if task == "question-answering":
            write_json(tmp / "predictions.json", predictions)
    return {**metrics, "out": str(out)}


def predict_task(model_dir: str | Path, task: Task, data: str | Path, out: Path, engine: str = "auto") -> int:
    """NER: a ``token<TAB>tag`` file aligned line by line with ``data`` (CoNLL or one token per line);
    QA: ``{question id: answer text}`` JSON. Returns the number of sentences / questions."""
    from distilprune.models.registry import resolve_model
    from distilprune.tasks import ner, qa

    check_writable(out)
    runner = load_task_runner(resolve_model(model_dir), engine=engine)
    if task == "token-classification":
        assert isinstance(runner, TokenTagger)
        sentences = ner.read_tokens(data) if Path(data).suffix == ".tokens" else ner.read_conll(data)
        ner.write_conll(out, sentences, runner.tag([s.tokens for s in sentences]))
        return len(sentences)
    assert isinstance(runner, SpanReader)
    examples = qa.read_squad(data)
    qa.write_predictions(out, runner.answer(examples))
    return len(examples)


def predict_task_texts(model_dir: str | Path, task: Task, texts: Sequence[str],
                       pairs: Sequence[str] | None, engine: str = "auto") -> list[dict[str, Any]]:
    """NER: the entities (type, text, character offsets, score) of each text; QA: the answer span of
    each question (``texts``) in its context (``pairs``)."""
    from distilprune.models.registry import resolve_model

    runner = load_task_runner(resolve_model(model_dir), engine=engine)
    if isinstance(runner, TokenTagger):
        require(pairs is None, f"{model_dir} is a token-classification model: it takes single texts")
        return [{"text": t, "entities": e} for t, e in zip(texts, runner.entities(texts), strict=True)]
    require(pairs is not None and len(pairs) == len(texts),
            f"{model_dir} answers questions: give each --text (a question) a --text-pair (its context)")
    return runner.answer_pairs(texts, pairs or [])


def task_texts(task: Task, data: str | Path, limit: int | None = None, pairs: bool = False) -> list:
    """Inputs of an NER / QA data file for export parity checks and benchmarks: sentences as text
    (words joined by spaces), questions as ``(question, context)`` (``pairs``) or one text."""
    from distilprune.tasks import ner, qa

    if task == "token-classification":
        sentences = ner.read_tokens(data) if Path(data).suffix == ".tokens" else ner.read_conll(data)
        return [" ".join(s.tokens) for s in sentences[:limit]]
    examples = qa.read_squad(data)[:limit]
    return [(e.question, e.context) if pairs else f"{e.question} {e.context}" for e in examples]


def validation_texts(task: Task, cfg: DataConfig, limit: int | None = None) -> list:
    """:func:`task_texts` of the validation rows of ``cfg`` (the file, or the training file's split)."""
    _, val, _ = _split(task, read_rows(task, cfg.train), cfg)
    val = val[:limit] if limit else val
    if task == "token-classification":
        return [" ".join(s.tokens) for s in val]
    return [(e.question, e.context) for e in val]
