"""Token classification (NER, e.g. WNUT-17): CoNLL files, word/sub-token alignment, entity spans
and entity-level scores.

Tag schemes. A file is read as IOBES when it has an ``E-``/``S-`` tag, else as BIO when it has a
``B-`` tag, else as IO. Every sentence must follow that scheme: a sentence that breaks it (``I-X``
after ``O`` or after another type in a BIO file, an entity not closed by ``E-``/``S-`` in an IOBES
file) is refused with its file and line, because the file then mixes schemes or is IOB1 (``I-``
starts entities), which is not supported: silently rewriting gold tags would change what a model
learns and how it is scored. Tags are converted to BIO on reading, the one scheme the rest of the
project sees. Predictions are never refused: spans follow the CoNLL ``conlleval`` rules (seqeval's
default mode, which the WNUT-17 scorer copies), where an ``I-X`` after ``O`` or after another type
starts a new entity; a predicted entity counts only when its span and type equal a gold one.

Sub-tokens. Words are encoded with ``is_split_into_words=True`` (fast tokenizers only); a word's
label sits on its first sub-token, ``-100`` elsewhere. Byte-level BPE (RoBERTa, GPT-2) loaded the
default way (``add_prefix_space=False``) would encode every word as if glued to the one before
(``York`` instead of ``ĠYork``: pieces the model never saw mid-sentence), so :func:`word_tokenizer`
gives it a copy that prefixes every word (``add_prefix_space=True``, as Hugging Face requires for
pre-split words); likewise a SentencePiece ``Metaspace`` set never to prefix. WordPiece tokenizers
(BERT, DistilBERT, MPNet) are used as they are. Words the tokenizer turns
into nothing (a lone variation selector or zero-width character) are encoded as its unknown token,
so every word keeps a prediction. Words cut off by ``max_length`` are predicted ``O`` and counted
(``lost_words``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.errors import UserError, require, require_file
from distilprune.io import atomic_file

IGNORE_INDEX = -100
_TAG = re.compile(r"([BIES])-(\S+)")
_WORD = re.compile(r"https?://\S+|[@#]?\w+|'\w+|[^\w\s]")
_CLONES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Sentence:
    """One sentence: its words, their BIO tags (``None`` when unlabelled) and the file line of its
    first word (0 when it was not read from a file)."""

    tokens: list[str]
    tags: list[str] | None = None
    line: int = 0


# ----------------------------------------------------------------------------------- reading
def _lines(path: Path, what: str) -> list[str]:
    """The file's lines, split on ``\\n`` only (a token may hold other Unicode line breaks)."""
    require_file(path, what)
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): re-encode it as UTF-8") from exc
    require(text.strip(" \t\r\n") != "", f"{path} is empty: no sentences")
    return [line.removesuffix("\r") for line in text.split("\n")]


def _blocks(lines: list[str]) -> Iterator[list[tuple[int, str]]]:
    """Runs of non-blank lines as ``(line number, line)``; a blank line holds only spaces/tabs."""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if line.strip(" \t"):
            block.append((number, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-person"`` -> ``("B", "person")``, ``"O"`` -> ``("O", "")``; anything else is refused."""
    if tag == "O":
        return "O", ""
    match = _TAG.fullmatch(tag)
    if match is None:
        raise UserError(f"tag {tag!r} is not O or B-/I-/E-/S-TYPE")
    return match[1], match[2]


def _token_tag(path: Path, number: int, line: str) -> tuple[str, str]:
    """``token<TAB>tag`` (extra middle columns ignored) or ``token tag``."""
    line = line.rstrip(" \t")
    parts = line.split("\t") if "\t" in line else re.split(r" +", line.strip(" "))
    token, tag = parts[0].strip(" "), parts[-1].strip(" ")
    require(len(parts) >= 2 and tag != "",
            f"{path}, line {number}: token {token!r} has no tag (expected token<TAB>tag)")
    require(token != "", f"{path}, line {number}: tag {tag!r} has no token before it")
    try:
        split_tag(tag)
    except UserError as exc:
        raise UserError(f"{path}, line {number}: {exc}") from None
    return token, tag


def _scheme(first_line: Mapping[str, tuple[int, str]]) -> str:
    if "E" in first_line or "S" in first_line:
        return "IOBES"
    return "BIO" if "B" in first_line else "IO"


def _first_invalid(scheme: str, tags: list[str]) -> int | None:
    """Index of the first tag breaking ``scheme`` (``len(tags)``: the sentence ends inside an
    entity), or ``None``."""
    prev_p, prev_t = "O", ""
    for i, tag in enumerate([*tags, "O"]):
        p, t = split_tag(tag)
        continues = p in ("I", "E") and prev_p in ("B", "I") and prev_t == t
        if scheme == "BIO" and p == "I" and not continues:
            return i
        if scheme == "IOBES" and continues != (p in ("I", "E") or prev_p in ("B", "I")):
            return i
        prev_p, prev_t = p, t
    return None


def _to_bio(scheme: str, tags: list[str]) -> list[str]:
    out: list[str] = []
    prev = "O"
    for tag in tags:
        p, t = split_tag(tag)
        if scheme == "IOBES":
            p = {"S": "B", "E": "I"}.get(p, p)
        elif scheme == "IO" and p == "I" and prev not in (f"B-{t}", f"I-{t}"):
            p = "B"
        prev = "O" if p == "O" else f"{p}-{t}"
        out.append(prev)
    return out


def _scheme_error(path: Path, scheme: str, first_line: Mapping[str, tuple[int, str]],
                  numbers: list[int], tags: list[str], bad: int) -> UserError:
    prev = tags[bad - 1] if bad else "the sentence start"
    if scheme == "BIO":
        line, b_tag = first_line["B"]
        return UserError(f"{path}, line {numbers[bad]}: {tags[bad]} follows {prev}, but this file is BIO "
                         f"({b_tag} at line {line}), where I-X continues B-X/I-X: it mixes BIO with "
                         "IO tags or is IOB1, which is not supported")
    line, e_tag = first_line.get("E") or first_line["S"]
    where = (f"{tags[bad]} follows {prev}" if bad < len(tags)
             else f"the entity ending in {prev} is not closed by an E-/S- tag")
    return UserError(f"{path}, line {numbers[min(bad, len(tags) - 1)]}: {where}, but this file is IOBES "
                     f"({e_tag} at line {line}): it mixes IOBES with BIO or IO tags")


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a ``token<TAB>tag`` (or ``token tag``) file with blank lines between sentences;
    tags checked against the file's scheme and returned as BIO (see the module docstring)."""
    path = Path(path)
    raw: list[tuple[list[int], list[str], list[str]]] = []
    first_line: dict[str, tuple[int, str]] = {}
    for block in _blocks(_lines(path, "CoNLL file")):
        numbers, tokens, tags = [], [], []
        for number, line in block:
            token, tag = _token_tag(path, number, line)
            first_line.setdefault(tag[0], (number, tag))
            numbers.append(number)
            tokens.append(token)
            tags.append(tag)
        raw.append((numbers, tokens, tags))
    scheme = _scheme(first_line)
    sentences = []
    for numbers, tokens, tags in raw:
        bad = _first_invalid(scheme, tags)
        if bad is not None:
            raise _scheme_error(path, scheme, first_line, numbers, tags, bad)
        sentences.append(Sentence(tokens, _to_bio(scheme, tags), numbers[0]))
    return sentences


def read_tokens(path: str | Path) -> list[Sentence]:
    """Sentences of a one-token-per-line file (WNUT ``test.tokens``), blank lines between them."""
    path = Path(path)
    sentences = []
    for block in _blocks(_lines(path, "tokens file")):
        for number, line in block:
            require("\t" not in line.strip(" \t"),
                    f"{path}, line {number}: a tab in a one-token-per-line file (a token<TAB>tag "
                    "file is read as CoNLL)")
        sentences.append(Sentence([line.strip(" \t") for _, line in block], None, block[0][0]))
    return sentences


def _where(index: int, sentence: Sentence) -> str:
    return f"sentence {index + 1}" + (f" (line {sentence.line})" if sentence.line else "")


def label_list(sentences: Sequence[Sentence]) -> list[str]:
    """Every tag in ``sentences`` plus ``B-``/``I-`` of each entity type, sorted, ``O`` first."""
    tags: set[str] = set()
    for i, sentence in enumerate(sentences):
        require(sentence.tags is not None, f"{_where(i, sentence)} has no tags: labels need a tagged file")
        tags.update(sentence.tags)
    types = entity_types(sorted(tags))
    tags.update(f"{p}-{t}" for t in types for p in "BI")
    tags.discard("O")
    return ["O", *sorted(tags)]


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types named by ``labels`` (``B-person``, ``I-person`` -> ``person``), sorted."""
    return sorted({split_tag(label)[1] for label in labels} - {""})


# ----------------------------------------------------------------------------- sub-tokens
def _prefix_every_word(node: dict | None) -> bool:
    """Make a serialised pre-tokenizer / post-processor prefix every word with a space marker."""
    if not node:
        return False
    kind = node.get("type")
    if kind == "Sequence":
        children = node.get("pretokenizers") or node.get("processors") or []
        return any([_prefix_every_word(child) for child in children])
    if kind in ("ByteLevel", "RobertaProcessing") and node.get("add_prefix_space") is False:
        node["add_prefix_space"] = True
        return True
    never = node.get("prepend_scheme") == "never" or node.get("add_prefix_space") is False
    if kind == "Metaspace" and never:
        node["prepend_scheme"] = "always"
        if "add_prefix_space" in node:
            node["add_prefix_space"] = True
        return True
    return False


def word_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` ready for pre-split words: itself, or (byte-level BPE / SentencePiece without a
    prefix space) a cached copy with ``add_prefix_space=True`` so no word is encoded as the
    continuation of the one before; the original is left unchanged."""
    require(getattr(tokenizer, "is_fast", False),
            "token classification and QA need a fast tokenizer (a tokenizer.json)")
    try:
        return _CLONES[tokenizer]
    except (KeyError, TypeError):  # not seen yet, or not weak-referenceable
        pass
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    clone = tokenizer
    if _prefix_every_word(spec.get("pre_tokenizer")):
        _prefix_every_word(spec.get("post_processor"))
        rebuilt = Tokenizer.from_str(json.dumps(spec))
        clone = copy.deepcopy(tokenizer)
        clone.backend_tokenizer.pre_tokenizer = rebuilt.pre_tokenizer
        clone.backend_tokenizer.post_processor = rebuilt.post_processor
        clone.add_prefix_space = True
        clone.init_kwargs["add_prefix_space"] = True
    with contextlib.suppress(TypeError):
        _CLONES[tokenizer] = clone
    return clone


def _visible_words(tokenizer: Any, sentences: Sequence[Sentence]) -> list[list[str]]:
    """Each sentence's words, those the tokenizer turns into no sub-token replaced by its unknown
    token (left as they are when it has none)."""
    unique = sorted({word for s in sentences for word in s.tokens})
    if not unique or tokenizer.unk_token is None:
        return [list(s.tokens) for s in sentences]
    pieces = tokenizer([[w] for w in unique], is_split_into_words=True, add_special_tokens=False)
    empty = {w for w, ids in zip(unique, pieces["input_ids"], strict=True) if not ids}
    return [[tokenizer.unk_token if w in empty else w for w in s.tokens] for s in sentences]


def lost_words(word_ids: Sequence[int | None], num_words: int) -> int:
    """How many of a sentence's ``num_words`` words have no sub-token in ``word_ids`` (truncated)."""
    return num_words - len({w for w in word_ids if w is not None})


def _align_labels(word_ids: Sequence[int | None], tags: list[str], label2id: Mapping[str, int],
                  where: str) -> list[int]:
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(IGNORE_INDEX)
        else:
            require(tags[word] in label2id, f"{where}: tag {tags[word]!r} is not one of the model's "
                                            f"labels ({', '.join(label2id)})")
            labels.append(label2id[tags[word]])
        previous = word
    return labels


def encode(sentences: Sequence[Sentence], tokenizer: Any, max_length: int,
           label2id: Mapping[str, int]) -> dict[str, list]:
    """Tokenise pre-split sentences (truncated to ``max_length``, unpadded).

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), ``word_ids``, ``num_words``, ``lost_words`` (words cut off) and, for tagged sentences,
    ``labels`` (the word's label id on its first sub-token, -100 on the others and on specials).
    """
    require(len(sentences) > 0, "no sentences to encode")
    tokenizer = word_tokenizer(tokenizer)
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    require(max_length > specials, f"max_length must be > {specials} (the special tokens), got {max_length}")
    tagged = [s.tags is not None for s in sentences]
    require(all(tagged) or not any(tagged), "some sentences have tags and others none")
    encoded = tokenizer(_visible_words(tokenizer, sentences), is_split_into_words=True,
                        truncation=True, max_length=max_length)
    out = {name: list(encoded[name]) for name in ("input_ids", "attention_mask", "token_type_ids")
           if name in encoded}
    out["word_ids"] = [encoded.word_ids(i) for i in range(len(sentences))]
    out["num_words"] = [len(s.tokens) for s in sentences]
    rows = list(enumerate(zip(out["word_ids"], sentences, strict=True)))
    out["lost_words"] = [lost_words(word_ids, len(s.tokens)) for _, (word_ids, s) in rows]
    if all(tagged):
        out["labels"] = [_align_labels(word_ids, s.tags, label2id, _where(i, s)) for i, (word_ids, s) in rows]
    return out


def _predicted_ids(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 2:
        return array.argmax(axis=-1)
    if array.ndim == 1:
        return array.astype(np.int64)
    raise ValueError(f"expected logits [tokens, labels] or label ids [tokens], got shape {array.shape}")


def _label(id2label: Mapping[Any, str] | Sequence[str], label_id: int) -> str:
    if isinstance(id2label, Mapping) and label_id not in id2label:
        return id2label[str(label_id)]
    return id2label[label_id]


def decode(word_ids: Sequence[int | None], logits_or_pred_ids: Any,
           id2label: Mapping[Any, str] | Sequence[str], num_words: int,
           padding_side: str = "right") -> list[str]:
    """Per-word tags from the prediction at each word's first sub-token; words without a sub-token
    (cut off by truncation, see :func:`lost_words`) get ``O``. Logits longer than ``word_ids``
    (padded in a batch) are cut on ``padding_side``."""
    preds = _predicted_ids(logits_or_pred_ids)
    n = len(word_ids)
    if len(preds) < n:
        raise ValueError(f"{len(preds)} predictions for {n} tokens")
    preds = preds[len(preds) - n:] if padding_side == "left" else preds[:n]
    tags, previous = ["O"] * num_words, None
    for word, pred in zip(word_ids, preds, strict=True):
        if word is not None and word != previous and word < num_words:
            tags[word] = _label(id2label, int(pred))
        previous = word
    return tags


# ------------------------------------------------------------------------------ entities
def _chunk_ends(prev_p: str, p: str, prev_t: str, t: str) -> bool:
    if prev_p == "O":
        return False
    return prev_p in ("E", "S") or (prev_p in ("B", "I") and p in ("B", "S", "O")) or prev_t != t


def _chunk_starts(prev_p: str, p: str, prev_t: str, t: str) -> bool:
    if p == "O":
        return False
    return p in ("B", "S") or (p in ("I", "E") and prev_p in ("E", "S", "O")) or prev_t != t


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of each entity in ``tags`` (end exclusive), by the conlleval rules."""
    found: list[tuple[str, int, int]] = []
    start: int | None = None
    prev_p, prev_t = "O", ""
    for i, tag in enumerate([*tags, "O"]):
        p, t = split_tag(tag)
        if start is not None and _chunk_ends(prev_p, p, prev_t, t):
            found.append((prev_t, start, i))
            start = None
        if _chunk_starts(prev_p, p, prev_t, t):
            start = i
        prev_p, prev_t = p, t
    return found


def _prf(gold: set, pred: set) -> dict[str, float | int]:
    correct = len(gold & pred)
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": len(gold),
            "predicted": len(pred), "correct": correct}


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision / recall / F1 (a predicted entity counts only when its span and type
    equal a gold one), overall and ``per_type`` (with ``support`` = gold entities)."""
    require(len(gold) == len(pred), f"{len(pred)} predicted sentences for {len(gold)} gold ones")
    gold_set: set[tuple[int, str, int, int]] = set()
    pred_set: set[tuple[int, str, int, int]] = set()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        require(len(g) == len(p), f"sentence {i + 1}: {len(p)} predicted tags for {len(g)} words")
        gold_set.update((i, *span) for span in spans(g))
        pred_set.update((i, *span) for span in spans(p))
    types = sorted({span[1] for span in gold_set | pred_set})
    per_type = {t: _prf({s for s in gold_set if s[1] == t}, {s for s in pred_set if s[1] == t})
                for t in types}
    return {**_prf(gold_set, pred_set), "per_type": per_type}


def entities(tokens: Sequence[str], tags: Sequence[str],
             text_offsets: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """Entities as ``{type, start_token, end_token (exclusive), text}``; with ``text_offsets`` (a
    ``(start, end)`` character span per token) also ``start``/``end`` character offsets."""
    require(len(tokens) == len(tags), f"{len(tags)} tags for {len(tokens)} tokens")
    found = []
    for type_, start, end in spans(tags):
        item: dict[str, Any] = {"type": type_, "start_token": start, "end_token": end,
                                "text": " ".join(tokens[start:end])}
        if text_offsets is not None:
            item["start"], item["end"] = text_offsets[start][0], text_offsets[end - 1][1]
        found.append(item)
    return found


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw text as words and their character spans: URLs, ``@user``/``#tag``/word runs, ``'s``-style
    clitics and single punctuation marks (close to the WNUT tweet tokenisation)."""
    matches = list(_WORD.finditer(text))
    return [m[0] for m in matches], [m.span() for m in matches]


def entities_from_text(text: str, word_spans: Sequence[tuple[int, int]],
                       tags: Sequence[str]) -> list[dict]:
    """:func:`entities` of raw ``text`` split at ``word_spans``: ``start``/``end`` are character
    offsets and ``text`` the exact slice of ``text`` (inner spacing kept)."""
    tokens = [text[start:end] for start, end in word_spans]
    found = entities(tokens, tags, word_spans)
    for item in found:
        item["text"] = text[item["start"]:item["end"]]
    return found


# ------------------------------------------------------------------------------- writing
def write_conll(path: str | Path, sentences: Sequence[Sentence], tags: Sequence[Sequence[str]]) -> None:
    """Write ``token<TAB>tag`` lines atomically, each token on the line it had in the file it was
    read from (blank lines kept; one blank line between sentences built in memory)."""
    require(len(tags) == len(sentences), f"{len(tags)} tag lists for {len(sentences)} sentences")
    lines: list[str] = []
    for i, (sentence, sentence_tags) in enumerate(zip(sentences, tags, strict=True)):
        where = _where(i, sentence)
        require(len(sentence_tags) == len(sentence.tokens),
                f"{where}: {len(sentence_tags)} tags for {len(sentence.tokens)} tokens")
        first = len(lines) + (1 if i else 0)
        lines.extend([""] * (max(first, sentence.line - 1) - len(lines)))
        for token, tag in zip(sentence.tokens, sentence_tags, strict=True):
            require(not re.search(r"[\t\n\r]", token + tag), f"{where}: a tab or line break in {token!r}")
            lines.append(f"{token}\t{tag}")
    with atomic_file(path, "wb") as handle:
        handle.write(("\n".join(lines) + "\n\n").encode("utf-8"))
