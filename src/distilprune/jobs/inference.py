"""Evaluate a saved model on labelled data, or predict for new data. Classifiers (texts or text
pairs) are handled here; token-classification and QA models by :mod:`distilprune.jobs.tasks`."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilprune.data.loading import load_table
from distilprune.errors import UserError, require
from distilprune.evaluate import classification_metrics, plot_confusion_matrix, plot_pr_curve, softmax
from distilprune.io import atomic_dir, atomic_file, check_writable, write_json
from distilprune.models.registry import resolve_model
from distilprune.predictor import Predictor, load_predictor
from distilprune.task import require_data_for, task_of_model


def _table(clf: Predictor, data: str | Path, text_column: str | None, label_column: str | None,
           text_pair_column: str | None, with_labels: bool):
    """The data file read as the classifier needs it (its labels, single texts or pairs)."""
    return load_table(data, text_column, label_column, label_names=clf.labels, with_labels=with_labels,
                      text_pair_column=text_pair_column, pairs=clf.pairs)


def model_task(model_dir: str | Path, data: str | Path) -> str:
    """The model's task; data of another kind is refused in one line."""
    task = task_of_model(resolve_model(model_dir))
    require_data_for(model_dir, task, data)
    return task


def evaluate_model(model_dir: str | Path, data: str | Path, out: str | Path | None = None,
                   text_column: str | None = None, label_column: str | None = None,
                   overwrite: bool = True, engine: str = "auto",
                   text_pair_column: str | None = None) -> dict[str, Any]:
    """Metrics (JSON) and plots (confusion matrix, PR curve) of a saved model on labelled data;
    token-classification and QA models: entity / SQuAD scores (:mod:`distilprune.jobs.tasks`)."""
    out = Path(out) if out else Path(model_dir) / f"eval_{Path(data).stem}"
    check_writable(out)
    if (task := model_task(model_dir, data)) != "classification":
        from distilprune.jobs.tasks import evaluate_task

        return evaluate_task(model_dir, task, data, out, overwrite, engine)
    clf = load_predictor(model_dir, engine=engine)
    table = _table(clf, data, text_column, label_column, text_pair_column, with_labels=True)
    logits = clf.logits(table.texts, table.extras or None, progress="evaluate", pairs=table.pairs)
    metrics = classification_metrics(table.labels, logits)
    metrics["data"] = str(data)
    metrics["task"] = "classification"
    metrics["labels"] = clf.labels
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "metrics.json", metrics)
        plot_confusion_matrix(metrics, clf.labels, tmp / "confusion_matrix.png")
        if logits.shape[-1] == 2:
            plot_pr_curve(table.labels, logits, tmp / "pr_curve.png")
    metrics["out"] = str(out)
    return metrics


@dataclasses.dataclass
class EvaluateConfig:
    """``distilprune evaluate``: ``model`` scored on labelled ``data`` into ``out``."""

    model: str = ""
    data: str = ""
    out: str | None = None  # default MODEL/eval_<data>
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None
    engine: str = "auto"
    overwrite: bool = True


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """:func:`evaluate_model` from its config."""
    return evaluate_model(cfg.model, cfg.data, cfg.out, cfg.text_column, cfg.label_column, cfg.overwrite,
                          cfg.engine, cfg.text_pair_column)


@dataclasses.dataclass
class PredictConfig:
    """``distilprune predict``: ``model``'s predictions for every row of ``data`` into ``out`` (a
    file, or a directory that gets ``predictions.<ext>``)."""

    model: str = ""
    data: str = ""
    out: str = ""
    text_column: str | None = None
    text_pair_column: str | None = None
    engine: str = "auto"
    overwrite: bool = False


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """:func:`predict_file` from its config: the number of rows and the file written."""
    count, target = predict_file(cfg.model, cfg.data, cfg.out, cfg.text_column, cfg.overwrite, cfg.engine,
                                 cfg.text_pair_column)
    return {"rows": count, "file": str(target)}


def prediction_file(out: Path, task: str, data: str | Path) -> Path:
    """Where predictions go: ``out`` itself when it names a file (its suffix picks the format),
    else ``out/predictions.<ext>``: ``conll`` (NER), ``json`` (QA), ``tsv`` (GLUE TSV input) or
    ``csv`` (Kaggle ``id,target``)."""
    if out.suffix and not out.is_dir():
        return out
    ext = {"token-classification": "conll", "question-answering": "json"}.get(task)
    return out / f"predictions.{ext or ('tsv' if Path(data).suffix.lower() == '.tsv' else 'csv')}"


def predict_file(model_dir: str | Path, data: str | Path, out: str | Path,
                 text_column: str | None = None, overwrite: bool = False, engine: str = "auto",
                 text_pair_column: str | None = None) -> tuple[int, Path]:
    """Predictions for every row of ``data`` (see :func:`prediction_file` for where and in which
    format); returns ``(count, file)``. A directory ``out`` is created, and removed again when
    nothing could be written."""
    out = Path(out)
    check_writable(out)
    task = model_task(model_dir, data)
    target = prediction_file(out, task, data)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists (pass --overwrite to replace it)")
    made = target.parent == out and not out.exists()
    if made:
        out.mkdir(parents=True)
    try:
        return _predict_into(model_dir, task, data, target, text_column, engine, text_pair_column), target
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()
        raise


def _predict_into(model_dir: str | Path, task: str, data: str | Path, out: Path, text_column: str | None,
                  engine: str, text_pair_column: str | None) -> int:
    if task != "classification":
        from distilprune.jobs.tasks import predict_task

        return predict_task(model_dir, task, data, out, engine)
    clf = load_predictor(model_dir, engine=engine)
    table = _table(clf, data, text_column, None, text_pair_column, with_labels=False)
    logits = clf.logits(table.texts, table.extras or None, progress="predict", pairs=table.pairs)
    labels = [clf.labels[p] for p in logits.argmax(axis=-1).tolist()]
    if out.suffix.lower() == ".tsv":
        from distilprune.tasks.glue import write_glue_predictions

        write_glue_predictions(out, table.ids, labels)
        return len(table)
    with atomic_file(out, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "target"])
        writer.writerows(zip(table.ids, labels, strict=True))
    return len(table)


def predict_text(model_dir: str | Path, texts: Sequence[str], engine: str = "auto",
                 pairs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Label and class probabilities for each text (or text pair, ``pairs`` the second texts);
    a token-classification model answers with entities, a QA model needs a question (``texts``)
    and a context (``pairs``) and answers with a span."""
    require(all(t.strip() for t in [*texts, *(pairs or [])]), "empty text given to --text")
    if (task := task_of_model(resolve_model(model_dir))) != "classification":
        from distilprune.jobs.tasks import predict_task_texts

        return predict_task_texts(model_dir, task, texts, pairs, engine)
    clf = load_predictor(model_dir, engine=engine)
    probs = softmax(clf.logits(list(texts), pairs=None if pairs is None else list(pairs)))
    return [
        {"text": t, **({"text_pair": pairs[i]} if pairs else {}),
         "label": clf.labels[int(p.argmax())], "probabilities": p.round(4).tolist()}
        for i, (t, p) in enumerate(zip(texts, probs, strict=True))
    ]
