"""Extractive question answering (SQuAD v1.1): reading and checking the JSON, splits by article,
sliding-window features, best-span post-processing, the official EM / F1 and predictions file.

Windows: question first, context second, ``truncation="only_second"``; ``doc_stride`` is the number
of context tokens two consecutive windows share (Hugging Face's ``stride``). A question too long to
leave a window room for that overlap is cut to fit. Features are not padded (a collator pads them):
positions and offsets index the unpadded feature, so a left-padding collator (XLNet) must shift
``start_positions``/``end_positions`` by its padding, and :func:`postprocess` cuts padded logits on
``padding_side``. Token types are never needed: the context is found with ``sequence_ids``, the
CLS token wherever the tokenizer puts it (first for BERT/RoBERTa, last for XLNet).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.errors import UserError, require
from distilprune.io import read_json, write_json


@dataclass
class QAExample:
    """One question on one context; ``answers`` is ``[{"text", "answer_start"}]`` (empty when
    unlabelled). ``answer_start_ambiguous`` is the rebuilt SQuAD train file's flag (the answer text
    occurs more than once in the context, ``answer_start`` is its first occurrence), else None."""

    id: str
    title: str
    context: str
    question: str
    answers: list[dict] = field(default_factory=list)
    answer_start_ambiguous: bool | None = None


# ----------------------------------------------------------------------------------- reading
def _get(node: Any, key: str, kind: type, path: Path, where: str) -> Any:
    value = node.get(key) if isinstance(node, dict) else None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    names = {str: "a string", int: "an integer", list: "a list"}
    require(ok, f"{path}: {where}: {key!r} is missing or not {names[kind]}")
    return value


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _answer(answer: Any, context: str, path: Path, qid: str) -> dict:
    """The answer as ``{"text", "answer_start"}``; refused unless its text is at ``answer_start``."""
    where = f"question {qid}: answer"
    text = _get(answer, "text", str, path, where)
    start = _get(answer, "answer_start", int, path, where)
    require(text.strip() != "", f"{path}, question {qid}: an answer's text is empty")
    if start >= 0 and context[start:start + len(text)] == text:
        return {"text": text, "answer_start": start}
    found = context.find(text)
    elsewhere = f"it occurs at {found}" if found >= 0 else "it does not occur in its context at all"
    raise UserError(f"{path}, question {qid}: answer {_short(text)!r} is not at answer_start {start} "
                    f"of its context; {elsewhere}")


def _example(qa: Any, title: str, context: str, path: Path, where: str) -> QAExample:
    qid = qa.get("id") if isinstance(qa, dict) else None
    require(isinstance(qid, str | int) and not isinstance(qid, bool) and str(qid).strip() != "",
            f"{path}: {where}: 'id' is missing")
    qid = str(qid)
    question = _get(qa, "question", str, path, f"question {qid}")
    answers = qa.get("answers", [])
    require(isinstance(answers, list), f"{path}, question {qid}: 'answers' is not a list")
    flag = qa.get("answer_start_ambiguous")
    return QAExample(qid, title, context, question, [_answer(a, context, path, qid) for a in answers],
                     flag if isinstance(flag, bool) else None)


def _check_answers(path: Path, examples: list[QAExample], require_answers: bool | None) -> None:
    """``True``: every question needs an answer; ``None``: all or none of them; ``False``: no check."""
    missing = [e.id for e in examples if not e.answers]
    if require_answers is False or not missing:
        return
    if require_answers or len(missing) < len(examples):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}, question {missing[0]}: no answers{more}; SQuAD v1.1 needs an answer "
                        "for every question of a labelled file")


def read_squad(path: str | Path, require_answers: bool | None = None) -> list[QAExample]:
    """Questions of a SQuAD v1.1 JSON file (``data[].title``, ``paragraphs[].context``,
    ``qas[].id/question/answers``), every answer checked against its context (see
    :func:`_check_answers` for ``require_answers``)."""
    path = Path(path)
    payload = read_json(path)
    require(isinstance(payload, dict) and isinstance(payload.get("data"), list),
            f"{path} is not SQuAD JSON: expected an object with a 'data' list of articles")
    examples: list[QAExample] = []
    for a, article in enumerate(payload["data"]):
        title = _get(article, "title", str, path, f"data[{a}]")
        for p, paragraph in enumerate(_get(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", str, path, where)
            require(context.strip() != "", f"{path}: {where}: the context is empty")
            examples.extend(_example(qa, title, context, path, f"{where}.qas[{q}]")
                            for q, qa in enumerate(_get(paragraph, "qas", list, path, where)))
    require(bool(examples), f"{path} has no questions")
    repeated = [qid for qid, n in Counter(e.id for e in examples).items() if n > 1]
    require(not repeated, f"{path}: question id {repeated[0] if repeated else ''!r} is used more than once")
    _check_answers(path, examples, require_answers)
    return examples


def _occurrences(text: str, part: str) -> int:
    count, at = 0, text.find(part)
    while at >= 0:
        count += 1
        at = text.find(part, at + 1)
    return count


def ambiguous_answers(examples: Sequence[QAExample]) -> int:
    """How many answers have a text occurring more than once (overlaps counted) in their context:
    for those the gold ``answer_start`` cannot be recovered from the text alone (in the rebuilt
    train file exactly the questions flagged ``answer_start_ambiguous``)."""
    return sum(1 for e in examples for answer in e.answers if _occurrences(e.context, answer["text"]) > 1)


def split_by_article(examples: Sequence[QAExample], validation_fraction: float,
                     seed: int) -> tuple[list[QAExample], list[QAExample]]:
    """``(train, validation)`` with whole articles (titles) held out: ``validation_fraction`` of the
    titles, drawn with ``seed``; each part keeps the input order."""
    require(0 < validation_fraction < 1, f"validation fraction must be in (0, 1), got {validation_fraction}")
    titles = sorted({e.title for e in examples})
    require(len(titles) >= 2, f"a split by article needs at least 2 articles, got {len(titles)}")
    random.Random(seed).shuffle(titles)
    held = set(titles[:min(len(titles) - 1, max(1, round(validation_fraction * len(titles))))])
    return [e for e in examples if e.title not in held], [e for e in examples if e.title in held]


# ----------------------------------------------------------------------------------- windows
def _question_limit(tokenizer: Any, max_length: int, doc_stride: int) -> int:
    """The most question tokens a window can hold and still overlap the next by ``doc_stride``."""
    require(getattr(tokenizer, "is_fast", False), "question answering needs a fast tokenizer")
    require(doc_stride >= 0, f"doc_stride must be >= 0, got {doc_stride}")
    limit = max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    require(limit >= 1, f"max_length {max_length} leaves no room for a question and a doc_stride of "
                        f"{doc_stride}: raise max_length or lower doc_stride")
    return limit


def _cut_question(tokenizer: Any, question: str, limit: int) -> str:
    """``question`` cut at a token boundary to at most ``limit`` tokens."""
    while True:
        encoded = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) <= limit:
            return question
        cut = encoded["offset_mapping"][limit - 1][1]
        question = question[:cut] if cut < len(question) else question[:-1]


def _fit_questions(tokenizer: Any, questions: list[str], limit: int) -> list[str]:
    """Questions without leading spaces (some SQuAD ones have many), too long ones cut to fit."""
    questions = [q.lstrip() for q in questions]
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    return [q if n <= limit else _cut_question(tokenizer, q, limit)
            for q, n in zip(questions, lengths, strict=True)]


def _windows(examples: Sequence[QAExample], tokenizer: Any, max_length: int, doc_stride: int) -> Any:
    require(bool(examples), "no questions to encode")
    limit = _question_limit(tokenizer, max_length, doc_stride)
    questions = _fit_questions(tokenizer, [e.question for e in examples], limit)
    return tokenizer(questions, [e.context for e in examples], truncation="only_second",
                     max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True)


def _base_features(encoded: Any) -> dict[str, list]:
    out = {name: list(encoded[name]) for name in ("input_ids", "attention_mask", "token_type_ids")
           if name in encoded}
    out["example_index"] = list(encoded["overflow_to_sample_mapping"])
    return out


def _cls_index(input_ids: list[int], tokenizer: Any) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def _answer_tokens(offsets: list[tuple[int, int]], sequence_ids: list[int | None], answer: dict,
                   cls: int) -> tuple[int, int]:
    """First and last token of ``answer`` in this window, or ``(cls, cls)`` unless it lies wholly in it."""
    text = answer["text"]
    start_char = answer["answer_start"] + len(text) - len(text.lstrip())
    end_char = answer["answer_start"] + len(text.rstrip())
    context = [k for k, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls, cls
    start = max(k for k in context if offsets[k][0] <= start_char)
    end = min(k for k in context if offsets[k][1] >= end_char)
    return start, end


def prepare_train_features(examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                           doc_stride: int) -> dict[str, list]:
    """Training windows: ``input_ids``, ``attention_mask`` (``token_type_ids`` when made),
    ``example_index`` and ``start_positions``/``end_positions`` of the first gold answer (the CLS
    index when the window does not hold all of it)."""
    for e in examples:
        require(bool(e.answers), f"question {e.id} has no answer to train on")
    encoded = _windows(examples, tokenizer, max_length, doc_stride)
    out = _base_features(encoded)
    out["start_positions"], out["end_positions"] = [], []
    for i, example_index in enumerate(out["example_index"]):
        cls = _cls_index(out["input_ids"][i], tokenizer)
        start, end = _answer_tokens(encoded["offset_mapping"][i], encoded.sequence_ids(i),
                                    examples[example_index].answers[0], cls)
        out["start_positions"].append(start)
        out["end_positions"].append(end)
    return out


def _context_offsets(offsets: list, sequence_ids: list[int | None]) -> list[tuple[int, int] | None]:
    return [tuple(span) if seq == 1 else None for span, seq in zip(offsets, sequence_ids, strict=True)]


def prepare_eval_features(examples: Sequence[QAExample], tokenizer: Any, max_length: int,
                          doc_stride: int) -> dict[str, list]:
    """Evaluation windows: the model inputs, ``example_index``, ``example_id`` and
    ``offset_mapping`` (character span per token, None outside the context)."""
    encoded = _windows(examples, tokenizer, max_length, doc_stride)
    out = _base_features(encoded)
    out["example_id"] = [examples[j].id for j in out["example_index"]]
    out["offset_mapping"] = [_context_offsets(offsets, encoded.sequence_ids(i))
                             for i, offsets in enumerate(encoded["offset_mapping"])]
    return out


# ----------------------------------------------------------------------------- predictions
def _vector(values: Any, length: int, padding_side: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(array) < length:
        raise ValueError(f"{len(array)} logits for a feature of {length} tokens")
    return array[len(array) - length:] if padding_side == "left" else array[:length]


def _best_span(offsets: list, start_logits: Any, end_logits: Any, n_best: int, max_answer_length: int,
               padding_side: str) -> tuple[float, int, int] | None:
    """``(score, start char, end char)`` of the best context span of one window, or None."""
    starts = _vector(start_logits, len(offsets), padding_side)
    ends = _vector(end_logits, len(offsets), padding_side)
    context = np.flatnonzero([span is not None for span in offsets])
    if not len(context):
        return None
    top_s = context[np.argsort(-starts[context], kind="stable")[:n_best]]
    top_e = context[np.argsort(-ends[context], kind="stable")[:n_best]]
    length = top_e[None, :] - top_s[:, None] + 1
    scores = np.where((length >= 1) & (length <= max_answer_length),
                      starts[top_s][:, None] + ends[top_e][None, :], -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not np.isfinite(scores[i, j]):
        return None
    return float(scores[i, j]), offsets[top_s[i]][0], offsets[top_e[j]][1]


def postprocess(examples: Sequence[QAExample], features: Mapping[str, list], start_logits: Any,
                end_logits: Any, n_best: int = 20, max_answer_length: int = 30,
                padding_side: str = "right") -> dict[str, dict]:
    """``{question id: {"text", "score", "start", "end"}}``: the best span (start + end logit, at most
    ``max_answer_length`` tokens, among each window's ``n_best`` starts and ends) over all windows
    of the question; ``start``/``end`` are character offsets in its context (empty text and None
    when no window has a valid span)."""
    require(len(start_logits) == len(end_logits) == len(features["example_index"]),
            f"{len(start_logits)} start and {len(end_logits)} end logit rows for "
            f"{len(features['example_index'])} features")
    windows: dict[int, list[int]] = defaultdict(list)
    for f, example_index in enumerate(features["example_index"]):
        windows[example_index].append(f)
    predictions = {}
    for j, example in enumerate(examples):
        best = None
        for f in windows.get(j, []):
            span = _best_span(features["offset_mapping"][f], start_logits[f], end_logits[f], n_best,
                              max_answer_length, padding_side)
            if span is not None and (best is None or span[0] > best[0]):
                best = span
        if best is None:
            predictions[example.id] = {"text": "", "score": None, "start": None, "end": None}
        else:
            score, start, end = best
            predictions[example.id] = {"text": example.context[start:end], "score": score,
                                       "start": start, "end": end}
    return predictions


# ---------------------------------------------------------------------------------- scores
def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, no punctuation, no a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _text(prediction: Any) -> str:
    return prediction["text"] if isinstance(prediction, Mapping) else str(prediction)


def squad_scores(predictions: Mapping[str, Any], examples: Sequence[QAExample]) -> dict[str, float | int]:
    """Official SQuAD v1.1 ``exact_match`` and ``f1`` in percent (max over gold answers; a question
    without a prediction scores 0 and is counted in ``missing``), over ``count`` questions."""
    require(bool(examples), "no questions to score")
    exact = f1 = 0.0
    missing = 0
    for example in examples:
        require(bool(example.answers), f"question {example.id} has no gold answer: scoring needs labels")
        if example.id not in predictions:
            missing += 1
            continue
        prediction = _text(predictions[example.id])
        golds = [answer["text"] for answer in example.answers]
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(_f1(prediction, g) for g in golds)
    return {"exact_match": 100 * exact / len(examples), "f1": 100 * f1 / len(examples),
            "count": len(examples), "missing": missing}


def write_predictions(path: str | Path, predictions: Mapping[str, Any]) -> None:
    """The official predictions file ``{question id: answer text}``, written atomically."""
    write_json(path, {str(qid): _text(prediction) for qid, prediction in predictions.items()})
