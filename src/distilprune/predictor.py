"""One predictor for every saved model: items in, one row out per item.

A :class:`Predictor` runs a PyTorch model directory (plain, compact, shrunk or sparse-engine), an
ONNX export or a DeepSparse export on the runtime its files call for
(:func:`~distilprune.formats.model_kind`), with the preprocessing, maximum length and label names
the model was trained with. Items are texts, or ``(text, second text)`` tuples for a pair
classifier (QA: question and context). A classifier answers with logits; a token-classification
model with ``{"entities": [...]}`` and a QA model with its answer span, one object per item.

``evaluate``, ``predict`` and ``serve`` load models through :func:`load_predictor`. Importing this
module does not import torch: an ONNX export runs without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilprune.errors import UserError, require
from distilprune.metadata import read_metadata, trained_label_names
from distilprune.progress import chunked, progress_bar
from distilprune.task import require_trained_head, split_pairs, task_of_model

Backend = Literal["torch", "onnx", "sparse", "deepsparse"]
# (cleaned items, progress bar or None) -> one row per item
Run = Callable[[list[Any], Any], np.ndarray]


@dataclass
class Predictor:
    """A loaded model behind one interface: ``predictor(items)`` is one forward pass over raw
    items (the model's preprocessing applied); :meth:`logits` is the batch-job form with records,
    text pairs and a progress bar. ``lengths(items)`` (token counts) lets a server cut batches by
    length."""

    path: str
    backend: Backend
    labels: list[str]
    run: Run
    task: str = "classification"
    pairs: bool = False
    max_length: int = 128
    preprocess: list[str] = field(default_factory=list)
    lengths: Callable[[list[Any]], list[int]] | None = None
    load_seconds: float = 0.0

    def clean(self, items: Sequence[Any], records: Sequence[dict] | None = None) -> list[Any]:
        """Items as the model saw its training data: each text (both texts of a pair) through the
        model's preprocessing steps; ``records`` are the rows' other fields, which some steps read."""
        if not self.preprocess:
            return list(items)
        from distilprune.data.preprocess import build_preprocessor

        step = build_preprocessor(self.preprocess)
        records = records or [{} for _ in items]
        return [tuple(step(text, record) for text in item) if isinstance(item, tuple) else step(item, record)
                for item, record in zip(items, records, strict=True)]

    def __call__(self, items: Sequence[Any]) -> np.ndarray:
        """One row per raw item, computed in one call (a server's batch)."""
        return self.run(self.clean(items), None)

    def logits(self, texts: Sequence[str], records: Sequence[dict] | None = None,
               progress: str | None = None, pairs: Sequence[str] | None = None) -> np.ndarray:
        """Logits for raw texts, or text pairs (``pairs``: the second texts); ``progress`` names a
        progress bar on stderr (on a terminal only)."""
        kind = "text pairs" if self.pairs else "single texts"
        require((pairs is not None) == self.pairs, f"{self.path} was trained on {kind}: give it {kind}")
        items = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        items = self.clean(items, records)
        if progress is None:
            return self.run(items, None)
        with progress_bar(len(items), progress) as bar:
            return self.run(items, bar)


def load_predictor(model: str | Path, threads: int | None = None, engine: str = "auto",
                   serving: bool = False) -> Predictor:
    """The predictor of a model directory (or alias), an ONNX export directory or a ``.onnx`` file.

    ``engine="sparse"`` runs a PyTorch model on the sparse int8 kernels; ``threads`` (None: leave
    the runtime's default) sets the intra-op threads. ``serving``: the caller forms the batches
    (one ONNX run per call, ORT threads that park between runs, DeepSparse batches padded to a
    power of two rows)."""
    start = time.perf_counter()
    path = _model_path(model)
    require(threads is None or threads >= 1, "threads must be at least 1")
    if (task := task_of_model(path)) != "classification":
        predictor = _task_predictor(path, task, threads, engine)
    elif _is_export(path):
        require(engine == "auto", f"{path} is an ONNX export: it runs on onnxruntime (--engine auto), "
                                  f"not --engine {engine}")
        predictor = _export_predictor(path, threads, serving)
    else:
        predictor = _torch_predictor(path, threads, engine)
    predictor.load_seconds = time.perf_counter() - start
    return predictor


def _model_path(model: str | Path) -> Path:
    """A ``.onnx`` file or a directory as given, else the directory an alias (or hub ID) names."""
    path = Path(model).expanduser()
    if path.is_dir() or (path.suffix == ".onnx" and path.is_file()):
        return path
    from distilprune.models.registry import resolve_model  # imports torch: not for a local export

    path = Path(resolve_model(model))
    require(path.is_dir(), f"model not found: {model}")
    return path


def _is_export(path: Path) -> bool:
    from distilprune.formats import ONNX_KINDS, model_kind

    return path.suffix == ".onnx" or model_kind(path) in ONNX_KINDS


def _settings(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config.json, distilprune.json)`` of a classifier; refused when it has no trained head."""
    from distilprune.export.runtime import read_config

    config = read_config(folder)
    require_trained_head(folder, config.get("architectures") or [], "classification")
    return config, read_metadata(folder)


def _labels(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The trained label names, else ``0 .. n-1`` (transformers' ``LABEL_i`` never leaks out)."""
    id2label = config.get("id2label") or {}
    return trained_label_names(meta, id2label) or [str(i) for i in range(len(id2label) or 2)]


def _classifier(path: Path, backend: Backend, config: dict[str, Any], meta: dict[str, Any], run: Run,
                max_length: int) -> Predictor:
    folder = path.parent if path.suffix == ".onnx" else path
    return Predictor(str(path), backend, _labels(config, meta), run, pairs=bool(meta.get("text_pairs")),
                     max_length=max_length, preprocess=list(meta.get("preprocess") or []),
                     lengths=token_counter(folder, max_length))


def _torch_predictor(path: Path, threads: int | None, engine: str) -> Predictor:
    import torch

    from distilprune.evaluate import predict_texts
    from distilprune.export.source import load_source_model
    from distilprune.models.loading import load_tokenizer

    config, meta = _settings(path)
    if threads:
        torch.set_num_threads(threads)
    try:
        model, tokenizer = load_source_model(path, engine), load_tokenizer(path)
    except (OSError, ValueError) as exc:  # transformers: missing weights / tokenizer files
        raise UserError(f"cannot load model {path}: {exc}") from exc
    max_length = int(meta.get("max_length", 128))

    def run(items: list[Any], bar: Any) -> np.ndarray:
        texts, pairs = split_pairs(items)
        return predict_texts(model, tokenizer, texts, max_length, bar=bar, pairs=pairs)

    sparse = engine == "sparse" or (path / "model.sparse.safetensors").is_file()
    return _classifier(path, "sparse" if sparse else "torch", config, meta, run, max_length)


def _export_predictor(path: Path, threads: int | None, serving: bool) -> Predictor:
    """An ONNX Runtime or DeepSparse export (no torch)."""
    from distilprune.engine.deepsparse import DeepSparseRunner, is_deepsparse_export
    from distilprune.export.runtime import OnnxClassifier, resolve_onnx

    onnx_file, folder = resolve_onnx(path)
    config, meta = _settings(folder)
    if is_deepsparse_export(folder):
        require(not meta.get("text_pairs"), f"{path}: DeepSparse exports take single texts only")
        runner = DeepSparseRunner(folder, threads)
        forward = _power_of_two_rows(runner.predict_logits) if serving else runner.predict_logits
        predictor = _classifier(path, "deepsparse", config, meta, _with_bar(forward),
                                int(meta.get("max_length", 128)))
        predictor.lengths = None  # static shapes: nothing to gain from cutting batches by length
        return predictor
    # A server shares its CPUs with its event loop: ORT threads park as soon as a run ends.
    onnx = OnnxClassifier(onnx_file, threads=threads, max_length=meta.get("max_length"), spin=not serving)

    def forward(items: list[Any]) -> np.ndarray:
        texts, pairs = split_pairs(items)
        return onnx.predict_logits(texts, max(1, len(texts)) if serving else 32, pairs)

    return _classifier(path, "onnx", config, meta, _with_bar(forward), onnx.max_length)


def _task_predictor(path: Path, task: str, threads: int | None, engine: str) -> Predictor:
    """A token tagger (entities per text) or span reader (an answer per question/context pair)."""
    from distilprune.formats import is_onnx
    from distilprune.task_runtime import SpanReader, load_task_runner

    folder = path.parent if path.suffix == ".onnx" else path
    runner = load_task_runner(path, threads, engine, spin=False)
    backend: Backend = "onnx" if is_onnx(path) else "torch"
    counter = token_counter(folder, runner.max_length)
    if isinstance(runner, SpanReader):
        def answer(items: list[Any], bar: Any) -> np.ndarray:
            questions, contexts = split_pairs(items)
            return _objects(runner.answer_pairs(questions, contexts or []))

        return Predictor(str(path), backend, [], answer, task, True, runner.max_length, lengths=counter)
    return Predictor(str(path), backend, list(runner.labels),
                     lambda texts, bar: _objects([{"entities": e} for e in runner.entities(list(texts))]),
                     task, False, runner.max_length, lengths=counter)


def _with_bar(forward: Callable[[list[Any]], np.ndarray]) -> Run:
    """An items -> rows runtime as a :data:`Run`: in chunks when a progress bar is given."""
    return lambda items, bar: forward(items) if bar is None else chunked(forward, items, bar)


def _power_of_two_rows(predict: Callable[..., np.ndarray]) -> Callable[[Sequence[str]], np.ndarray]:
    """DeepSparse compiles one engine per batch size: run batches padded to a power of two rows
    (a few engines) instead of compiling one for every size a server's batcher forms."""

    def logits(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        rows = 1 << max(0, len(texts) - 1).bit_length()
        return predict(texts + texts[-1:] * (rows - len(texts)), batch_size=rows)[:len(texts)]

    return logits


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array holding one answer per item (a batch's rows)."""
    rows = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        rows[i] = value
    return rows


def token_counter(folder: Path, max_length: int) -> Callable[[list[Any]], list[int]]:
    """Token counts (unpadded, truncated) of texts, used to group a batch by length; without a
    readable ``tokenizer.json``, a character estimate."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # missing or unreadable: the model loader reports real tokenizer problems
        return lambda texts: [len(str(t)) // 4 + 2 for t in texts]
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts)]
