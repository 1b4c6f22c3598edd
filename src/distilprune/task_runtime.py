"""Run token-classification (NER) and extractive-QA models on words and question/context pairs.

A *forward* maps a padded batch (numpy int64 arrays by input name) to the model's outputs as numpy
arrays: a PyTorch model (:func:`torch_forward`) or an ONNX export (:func:`onnx_forward`), so
evaluate, predict, serve, the export parity check and benchmark share one code path. Importing
this module does not import torch; only a PyTorch model directory does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.errors import require
from distilprune.task import OUTPUTS, Task, task_of_model

Forward = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float64, stable)."""
    shifted = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def run_features(forward: Forward, tokenizer: Any, features: Sequence[dict[str, list[int]]],
                 names: Sequence[str], batch_size: int = 32) -> list[list[np.ndarray]]:
    """Each output of ``forward`` for every feature, over its real tokens only (padding removed),
    computed in batches of similar length."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list[list[np.ndarray]] = [[] for _ in features]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        padded = tokenizer.pad([{n: features[i][n] for n in names} for i in chunk], return_tensors="np")
        batch = {n: np.asarray(padded[n], dtype=np.int64) for n in names}
        outputs = forward(batch)
        mask = batch["attention_mask"].astype(bool)
        for row, i in enumerate(chunk):
            results[i] = [np.asarray(out[row])[mask[row]] for out in outputs]
    return results


# ----------------------------------------------------------------------------- token classification
class TokenTagger:
    """Tags words with a token-classification model: each word takes its first sub-token's label
    (:mod:`distilprune.tasks.ner` aligns and decodes)."""

    def __init__(self, forward: Forward, tokenizer: Any, names: Sequence[str], labels: Sequence[str],
                 max_length: int, batch_size: int = 32) -> None:
        self.forward, self.tokenizer, self.names = forward, tokenizer, list(names)
        self.labels, self.max_length, self.batch_size = list(labels), max_length, batch_size

    def encode(self, sentences: Sequence[Sequence[str]]) -> tuple[list[dict], list[list[int | None]]]:
        """``(features, word ids per token)`` of word-split sentences (truncated to max length)."""
        from distilprune.tasks import ner

        enc = ner.encode([ner.Sentence(list(s)) for s in sentences], self.tokenizer, self.max_length, {})
        features = [{n: enc[n][i] for n in self.names} for i in range(len(sentences))]
        return features, enc["word_ids"]

    def logits(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence, the ``(tokens, labels)`` logits of its real tokens."""
        features, _ = self.encode(sentences)
        return [out[0] for out in run_features(self.forward, self.tokenizer, features, self.names,
                                               self.batch_size)]

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[str], list[float]]]:
        """Per sentence, its words' tags and the probability of each (words cut off by the maximum
        length are tagged ``O`` with probability 0)."""
        from distilprune.tasks import ner

        if not sentences:
            return []
        features, word_ids = self.encode(sentences)
        outputs = run_features(self.forward, self.tokenizer, features, self.names, self.batch_size)
        results = []
        for out, ids, words in zip(outputs, word_ids, sentences, strict=True):
            probs = softmax(out[0])
            first = {w: pos for pos, w in reversed(list(enumerate(ids))) if w is not None}
            scores = [float(probs[first[w]].max()) if w in first else 0.0 for w in range(len(words))]
            results.append((ner.decode(ids, out[0], self.labels, len(words)), scores))
        return results

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """The tags of every word of every sentence."""
        return [tags for tags, _ in self.predict(sentences)]

    def entities(self, texts: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Entities (type, text, character start/end, mean word probability) found in raw texts."""
        from distilprune.tasks import ner

        split = [ner.split_words(t) for t in texts]
        found = iter(self.predict([words for words, _ in split if words]))
        results = []
        for text, (words, spans) in zip(texts, split, strict=True):
            if not words:
                results.append([])
                continue
            tags, scores = next(found)
            entities = ner.entities_from_text(text, spans, tags)
            results.append([{"type": e["type"], "text": e["text"], "start": e["start"], "end": e["end"],
                             "score": float(np.mean(scores[e["start_token"]:e["end_token"]]))}
                            for e in entities])
        return results


# ----------------------------------------------------------------------------- question answering
class SpanReader:
    """Extractive QA: contexts read in overlapping windows, answers decoded from the n-best
    start/end positions within ``max_answer_length`` tokens."""

    def __init__(self, forward: Forward, tokenizer: Any, names: Sequence[str], max_length: int,
                 doc_stride: int = 128, n_best: int = 20, max_answer_length: int = 30,
                 batch_size: int = 32) -> None:
        self.forward, self.tokenizer, self.names = forward, tokenizer, list(names)
        self.max_length, self.doc_stride = max_length, min(doc_stride, max_length // 2)
        self.n_best, self.max_answer_length, self.batch_size = n_best, max_answer_length, batch_size

    def features(self, examples: Sequence[Any]) -> dict[str, list]:
        """Windows of every example (input ids, offsets of context tokens, example index)."""
        from distilprune.tasks import qa

        return qa.prepare_eval_features(examples, self.tokenizer, self.max_length, self.doc_stride)

    def logits(self, examples: Sequence[Any]) -> tuple[dict[str, list], list[np.ndarray], list[np.ndarray]]:
        """``(features, start logits, end logits)`` per window (real tokens only)."""
        features = self.features(examples)
        rows = [{n: features[n][i] for n in self.names} for i in range(len(features["input_ids"]))]
        outputs = run_features(self.forward, self.tokenizer, rows, self.names, self.batch_size)
        return features, [o[0] for o in outputs], [o[1] for o in outputs]

    def answer(self, examples: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """``{example id: {text, score, start, end}}`` (character offsets into the context)."""
        from distilprune.tasks import qa

        features, starts, ends = self.logits(examples)
        return qa.postprocess(examples, features, starts, ends, self.n_best, self.max_answer_length)

    def answer_pairs(self, questions: Sequence[str], contexts: Sequence[str]) -> list[dict[str, Any]]:
        """``{question, text, score, start, end}`` of each question in its context."""
        from distilprune.tasks.qa import QAExample

        examples = [QAExample(id=str(i), title="", question=q, context=c, answers=[])
                    for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]
        found = self.answer(examples)
        answers = [found[str(i)] for i in range(len(examples))]
        casts = {"score": float, "start": int, "end": int}
        return [{"question": q, "text": a["text"],
                 **{k: None if a[k] is None else cast(a[k]) for k, cast in casts.items()}}
                for q, a in zip(questions, answers, strict=True)]


# ----------------------------------------------------------------------------- loading
def read_json_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def onnx_forward(onnx_file: str | Path, threads: int | None = None, spin: bool = True
                 ) -> tuple[Forward, list[str]]:
    """``(forward, input names)`` of an ONNX export run by onnxruntime."""
    import onnxruntime as ort

    from distilprune.errors import UserError
    from distilprune.export.runtime import session_options

    try:
        session = ort.InferenceSession(str(onnx_file), session_options(threads, spin),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UserError(f"cannot load ONNX model {onnx_file}: {exc}") from exc
    names = [i.name for i in session.get_inputs()]
    return (lambda batch: session.run(None, {n: batch[n] for n in names})), names


def torch_forward(model: Any, task: Task) -> tuple[Forward, set[str]]:
    """``(forward, accepted input names)`` of a PyTorch model of ``task`` (eval mode, no grad)."""
    import torch

    from distilprune.models.loading import model_input_names

    accepted, keys = model_input_names(model), OUTPUTS[task]
    model.eval()  # (the training loop sets train mode again after evaluating)

    def forward(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k in accepted})
        return [getattr(out, k).float().numpy() for k in keys]

    return forward, accepted


def make_runner(forward: Forward, tokenizer: Any, names: Sequence[str], task: Task,
                settings: dict[str, Any], labels: Sequence[str] | None = None,
                batch_size: int = 32) -> TokenTagger | SpanReader:
    """The tagger or reader of ``task`` with the model's recorded settings (``distilprune.json``)."""
    max_length = int(settings.get("max_length") or 128)
    if task == "token-classification":
        require(bool(labels), "a token-classification model needs its label names (config id2label)")
        return TokenTagger(forward, tokenizer, names, labels or [], max_length, batch_size)
    stride = int(settings.get("doc_stride") or max(1, max_length // 4))
    return SpanReader(forward, tokenizer, names, max_length, stride,
                      int(settings.get("n_best") or 20), int(settings.get("max_answer_length") or 30),
                      batch_size)


def label_names(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The trained label names: ``distilprune.json``, else ``config.json``'s ``id2label``."""
    if meta.get("label_names"):
        return [str(x) for x in meta["label_names"]]
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def load_task_runner(path: str | Path, threads: int | None = None, engine: str = "auto",
                     spin: bool = True, batch_size: int = 32) -> TokenTagger | SpanReader:
    """A token tagger or span reader for a model directory or ONNX export (its own runtime; an
    ONNX export with a ``tokenizer.json`` runs without importing torch)."""
    from distilprune.export.runtime import read_config, require_tokenizer_files
    from distilprune.formats import is_onnx

    path = Path(path)
    folder = path.parent if path.suffix == ".onnx" else path
    task = task_of_model(folder)
    require(task != "classification", f"{path} is a classifier, not a token-classification or QA model")
    config, meta = read_config(folder), read_json_file(folder / "distilprune.json")
    require_tokenizer_files(folder)
    if is_onnx(path):
        require(engine == "auto", f"{path} is an ONNX export: it runs on onnxruntime (--engine auto)")
        onnx_file = path if path.suffix == ".onnx" else path / "model.onnx"
        forward, names = onnx_forward(onnx_file, threads, spin)
        tokenizer = _fast_tokenizer(folder, names)
    else:
        import torch

        from distilprune.export.source import load_source_model
        from distilprune.models.loading import load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        tokenizer = load_tokenizer(folder)
        forward, accepted = torch_forward(load_source_model(folder, engine), task)
        names = [n for n in tokenizer.model_input_names if n in accepted]
    return make_runner(forward, tokenizer, names, task, meta, label_names(config, meta), batch_size)


def _fast_tokenizer(folder: Path, names: list[str]) -> Any:
    """The folder's tokenizer making the graph's inputs ``names``: ``PreTrainedTokenizerFast`` on its
    ``tokenizer.json`` (transformers' Auto classes import torch), else ``AutoTokenizer``."""
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder), model_input_names=names)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), model_input_names=names)
