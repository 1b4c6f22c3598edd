"""GLUE TSV files (SST-2, QNLI and the other single-sentence or sentence-pair tasks): read with
GLUE's quirks (unquoted fields that may hold quote marks, strings such as ``null`` or ``NA`` kept
as text) into ``text`` / ``text_pair`` / ``label`` / ``index`` columns, and the predictions file."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from distilprune.errors import UserError, require, require_file
from distilprune.io import atomic_file

PAIRS = (("question", "sentence"), ("sentence1", "sentence2"), ("question1", "question2"),
         ("premise", "hypothesis"))
SINGLE = ("sentence", "text")
LABELS = ("label", "gold_label")
INDICES = ("index", "idx", "id")


def _text(path: Path) -> str:
    require_file(path, "GLUE file")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): re-encode it as UTF-8") from exc
    require(text.strip() != "", f"{path} is empty")
    return text


def _check_fields(path: Path, text: str) -> None:
    """Every line has as many tab-separated fields as the header (pandas would silently drop extra
    fields or turn the first column into an index)."""
    lines = text.split("\n")
    expected = lines[0].count("\t") + 1
    for number, line in enumerate(lines[1:], start=2):
        found = line.count("\t") + 1
        if found != expected and not (line.strip("\r") == "" and number == len(lines)):
            raise UserError(f"{path}, line {number}: {found} tab-separated fields, expected {expected} "
                            "as in the header (GLUE fields are unquoted: a tab cannot be inside one)")


def _read(path: Path) -> pd.DataFrame:
    text = _text(path)
    _check_fields(path, text)
    try:
        return pd.read_csv(io.StringIO(text), sep="\t", quoting=csv.QUOTE_NONE, dtype=str,
                           keep_default_na=False, na_filter=False, index_col=False)
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(f"cannot parse {path}: {reason}") from exc


def _first(columns: dict[str, str], names: Sequence[str]) -> str | None:
    return next((columns[name] for name in names if name in columns), None)


def _text_columns(path: Path, columns: dict[str, str]) -> tuple[str, str | None]:
    """The text column and, for a pair task, the second one (both required once either is seen)."""
    shown = ", ".join(columns.values())
    for first, second in PAIRS:
        if first in columns or (second in columns and second not in SINGLE):
            require(first in columns and second in columns,
                    f"{path}: a {first}/{second} pair file needs both columns (columns: {shown})")
            return columns[first], columns[second]
    text = _first(columns, SINGLE)
    require(text is not None, f"{path}: no text column (expected one of {', '.join(SINGLE)} or a pair "
                              f"such as question/sentence; columns: {shown})")
    return text, None


def _check_cells(path: Path, frame: pd.DataFrame) -> None:
    """Refuse a row whose text, pair, label or index is empty or missing (a short row)."""
    for column in frame.columns:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise UserError(f"{path}, line {row + 2}: empty or missing {column} "
                            f"({int(empty.sum())} such rows)")


def read_glue_tsv(path: str | Path) -> pd.DataFrame:
    """A GLUE TSV as a frame with ``text``, ``text_pair`` (pair tasks), ``label`` (labelled files)
    and ``index`` (test files) columns of strings, in file order."""
    path = Path(path)
    frame = _read(path)
    require(len(frame) > 0, f"{path} has a header but no rows")
    columns = {str(c).strip().lower(): c for c in frame.columns}
    text, pair = _text_columns(path, columns)
    picked = {"index": _first(columns, INDICES), "text": text, "text_pair": pair,
              "label": _first(columns, LABELS)}
    out = pd.DataFrame({name: frame[column] for name, column in picked.items() if column is not None})
    _check_cells(path, out)
    return out


def write_glue_predictions(path: str | Path, indices: Sequence[Any], labels: Sequence[Any]) -> None:
    """``index<TAB>prediction`` with a header line (GLUE's submission format), written atomically."""
    require(len(indices) == len(labels), f"{len(labels)} predictions for {len(indices)} indices")
    rows = [f"{index}\t{label}" for index, label in zip(indices, labels, strict=True)]
    bad = next((row for row in rows if re.search(r"[\n\r]", row) or row.count("\t") != 1), None)
    require(bad is None, f"a tab or line break inside an index or prediction: {bad!r}")
    with atomic_file(path, "wb") as handle:
        handle.write("\n".join(["index\tprediction", *rows, ""]).encode("utf-8"))
