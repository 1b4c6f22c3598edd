"""How well a tokenizer's vocabulary covers (preprocessed) tweets: sub-word splits and unknowns.

Words are whitespace-separated. Through the fast tokenizer's character offsets every token is
attributed to the word it lies in (a token in the gap before a word, such as a lone
SentencePiece ``▁``, goes to that word). A word is *split* when one of its letter/digit runs
is cut into several tokens: ``#wildfires`` → ``#`` ``wild`` ``##fires`` is split, while
``fire.`` → ``fire`` ``.`` and ``I'm`` → ``i`` ``'`` ``m`` are not (every tokenizer cuts at
punctuation; a word-level vocabulary splits nothing). Words without a letter or digit
(``...``, emoji) are left out of the word statistics; all tokens count for the unknown share.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from distilprune.errors import require

_WORD_RE = re.compile(r"\S+")
_RUN_RE = re.compile(r"[^\W_]+")  # letters/digits; underscores count as punctuation
KINDS = ("hashtag", "mention", "url", "word")


def word_kind(word: str) -> str:
    """``hashtag`` (#…), ``mention`` (@…), ``url`` (http…, www.…) or plain ``word``."""
    if word.startswith("#") and len(word) > 1:
        return "hashtag"
    if word.startswith("@") and len(word) > 1:
        return "mention"
    return "url" if word.lower().startswith(("http", "www.")) else "word"


@dataclass
class WordTokens:
    """One word occurrence: its text, the token ids attributed to it and the cuts inside its runs."""

    word: str
    token_ids: list[int]
    cuts: int


def _text_words(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> list[WordTokens]:
    spans = [m.span() for m in _WORD_RE.finditer(text)]
    ends = [end for _, end in spans]
    runs = [(m.start(), m.end(), i) for i, (s, e) in enumerate(spans) for m in _RUN_RE.finditer(text, s, e)]
    run_ends = [end for _, end, _ in runs]
    hits = [0] * len(runs)
    tokens: list[list[int]] = [[] for _ in spans]
    for token_id, (start, end) in zip(ids, offsets, strict=True):
        index = bisect_right(ends, start)  # the first word ending after the token starts
        if index < len(spans):
            tokens[index].append(token_id)
        run = bisect_right(run_ends, start)
        while run < len(runs) and runs[run][0] < end:
            hits[run] += 1
            run += 1
    cuts: dict[int, int] = {}
    for (_, _, index), count in zip(runs, hits, strict=True):
        cuts[index] = cuts.get(index, 0) + max(count - 1, 0)
    return [WordTokens(text[spans[i][0]:spans[i][1]], tokens[i], n) for i, n in cuts.items()]


def word_tokens(tokenizer: PreTrainedTokenizerBase,
                texts: Sequence[str]) -> tuple[list[WordTokens], int, int, int]:
    """``(words with a letter/digit, n_whitespace_words, n_tokens, n_unknown)`` (no specials)."""
    require(tokenizer.is_fast, "vocabulary coverage needs a fast (Rust) tokenizer")
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                    truncation=False, verbose=False)
    unk_id = tokenizer.unk_token_id
    words: list[WordTokens] = []
    n_words = n_tokens = n_unk = 0
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        words += _text_words(text, ids, offsets)
        n_words += len(text.split())
        n_tokens += len(ids)
        n_unk += sum(unk_id is not None and i == unk_id for i in ids)
    return words, n_words, n_tokens, n_unk


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _by_kind(words: list[WordTokens]) -> dict[str, dict[str, float]]:
    total, split = Counter(), Counter()
    for w in words:
        kind = word_kind(w.word)
        total[kind] += 1
        split[kind] += w.cuts > 0
    return {k: {"words": total[k], "split_share": _share(split[k], total[k])} for k in KINDS}


def _first(words: list[WordTokens]) -> dict[str, WordTokens]:
    first: dict[str, WordTokens] = {}
    for w in words:
        first.setdefault(w.word, w)
    return first


def _top_split(tokenizer: PreTrainedTokenizerBase, words: list[WordTokens],
               top: int) -> list[dict[str, Any]]:
    counts = Counter(w.word for w in words)
    first = _first(words)
    split = sorted((w for w, t in first.items() if t.cuts),
                   key=lambda w: (-counts[w], -first[w].cuts, w))[:top]
    return [{"word": w, "count": counts[w], "pieces": first[w].cuts + 1,
             "tokens": tokenizer.convert_ids_to_tokens(first[w].token_ids)} for w in split]


def vocabulary_coverage(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                        top: int = 20) -> dict[str, Any]:
    """Split-word share, unknown-token share, sub-words per word and the most split frequent words.

    ``split_word_share``: word occurrences with a letter/digit run cut into several tokens;
    ``split_type_share``: the same over distinct words; ``unk_token_share``: unknown tokens
    among all produced tokens; ``subwords_per_word``: 1 + mean cuts per word (1.0 for a
    word-level vocabulary); ``tokens_per_word``: all tokens (punctuation included) per
    whitespace word; ``by_kind``: split share of hashtags, mentions, URLs and plain words.
    """
    words, n_words, n_tokens, n_unk = word_tokens(tokenizer, texts)
    types = _first(words)
    return {
        "texts": len(texts),
        "words": len(words),
        "word_types": len(types),
        "tokens": n_tokens,
        "split_word_share": _share(sum(w.cuts > 0 for w in words), len(words)),
        "split_type_share": _share(sum(w.cuts > 0 for w in types.values()), len(types)),
        "unk_token_share": _share(n_unk, n_tokens),
        "subwords_per_word": 1.0 + _share(sum(w.cuts for w in words), len(words)),
        "tokens_per_word": _share(n_tokens, n_words),
        "by_kind": _by_kind(words),
        "top_split": _top_split(tokenizer, words, top),
    }
