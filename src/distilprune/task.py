"""What task a data file or a model is for: the one place every command decides it.

Three kinds: ``classification`` (a label per text or text pair: CSV, TSV, JSONL, JSON arrays),
``token-classification`` (NER: CoNLL files, ``token<TAB>tag``, a blank line between sentences)
and ``question-answering`` (extractive, SQuAD v1.1 JSON). A data file's kind comes from its
suffix and, for ``.json``, its layout; ``--task`` overrides it. A model's kind is recorded in its
``distilprune.json`` (``task``) and its ``config.json`` (``architectures``); commands read it from
the model and refuse data of another kind. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from distilprune.errors import UserError, require

Task = Literal["classification", "token-classification", "question-answering"]
TASKS: tuple[Task, ...] = ("classification", "token-classification", "question-answering")
ALIASES: dict[str, Task] = {"ner": "token-classification", "qa": "question-answering",
                            "text-classification": "classification"}
# The transformers class suffix of each task's head (``BertForTokenClassification``, ...).
HEADS: dict[Task, str] = {"classification": "ForSequenceClassification",
                          "token-classification": "ForTokenClassification",
                          "question-answering": "ForQuestionAnswering"}
# What the model's ONNX graph returns.
OUTPUTS: dict[Task, list[str]] = {"classification": ["logits"], "token-classification": ["logits"],
                                  "question-answering": ["start_logits", "end_logits"]}
PIPELINE_TAGS: dict[Task, str] = {"classification": "text-classification",
                                  "token-classification": "token-classification",
                                  "question-answering": "question-answering"}
CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".tokens")
DESCRIPTION: dict[Task, str] = {
    "classification": "classification data (CSV/TSV/JSONL/JSON rows)",
    "token-classification": "token-classification data (CoNLL: token<TAB>tag)",
    "question-answering": "question-answering data (SQuAD JSON)",
}
_SQUAD_HEAD = re.compile(r'^\s*\{.*?"(data|paragraphs)"\s*:', re.S)


def parse_task(value: str | None) -> Task | None:
    """``value`` as a task name (aliases ``ner``, ``qa``); ``None`` stays ``None``."""
    if value is None:
        return None
    name = ALIASES.get(value.strip().lower(), value.strip().lower())
    require(name in TASKS, f"unknown task {value!r}: use {', '.join(TASKS)} (or ner, qa)")
    return name  # type: ignore[return-value]


def task_of_data(path: str | Path, override: str | None = None) -> Task:
    """The task a data file holds: ``override`` (``--task``) when given, else its suffix/layout."""
    if override:
        return parse_task(override)  # type: ignore[return-value]
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return "token-classification"
    if suffix == ".json" and _looks_like_squad(path):
        return "question-answering"
    return "classification"


def _looks_like_squad(path: Path) -> bool:
    """A JSON object whose first keys lead to SQuAD's ``data``/``paragraphs`` (read: 64 KB)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False  # the loaders report a missing file in one line
    return bool(_SQUAD_HEAD.match(head)) and '"paragraphs"' in head


def task_of_config(config: dict[str, Any], meta: dict[str, Any] | None = None) -> Task:
    """The task of a model from its ``distilprune.json`` (``meta``) or ``config.json`` architectures
    (classification when neither says: hub models, encoders, masked-LMs)."""
    if meta and meta.get("task") in TASKS:
        return meta["task"]
    architectures = " ".join(config.get("architectures") or [])
    for task in ("token-classification", "question-answering"):
        if HEADS[task] in architectures:
            return task  # type: ignore[return-value]
    return "classification"


def task_of_model(path: str | Path) -> Task:
    """The task of a model or export directory (or ``.onnx`` file); ``classification`` when the
    directory records none (aliases and hub IDs resolve to classification too)."""
    path = Path(path)
    folder = path.parent if path.suffix == ".onnx" else path
    return task_of_config(_read(folder / "config.json"), _read(folder / "distilprune.json"))


def require_trained_head(name: str | Path, architectures: list[str], task: Task = "classification") -> None:
    """Refuse a model whose ``architectures`` has no trained head of ``task`` (a pretrained encoder,
    a masked-LM): its head would be random, and every answer made up."""
    kinds = ", ".join(architectures) or "no architectures in its config.json"
    if HEADS[task] not in kinds:
        what = "classifier" if task == "classification" else f"{task} model"
        raise UserError(f"{name} is not a trained {what} ({kinds}): fine-tune it first "
                        f"(distilprune finetune --model {name} ...)")


def has_head(config: dict[str, Any], task: Task) -> bool:
    """Whether ``config.architectures`` names a trained head of ``task``."""
    return any(HEADS[task] in a for a in config.get("architectures") or [])


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # the model loaders report corrupt files in one line


def require_data_for(model: str | Path, task: Task, data: str | Path, override: str | None = None) -> None:
    """Refuse a data file of another kind than the model's task, in one line."""
    kind = task_of_data(data, override)
    if kind != task:
        raise UserError(f"{data} is {DESCRIPTION[kind]}, but {model} is a {task} model "
                        f"(it needs {DESCRIPTION[task]})")


def task_of_module(model: Any) -> Task:
    """The task of a loaded transformers model, from its class (``BertForTokenClassification``...)."""
    name = type(model).__name__
    for task in ("token-classification", "question-answering"):
        if HEADS[task] in name:  # type: ignore[index]
            return task  # type: ignore[return-value]
    return "classification"


def split_pairs(items: Any) -> tuple[list[str], list[str] | None]:
    """``(texts, second texts or None)`` of model inputs given as texts or as ``(text, second
    text)`` pairs (tuples, or lists read back from JSON): pair classifiers, QA questions/contexts."""
    items = list(items)
    if items and isinstance(items[0], list | tuple):
        return [str(a) for a, _ in items], [str(b) for _, b in items]
    return items, None
