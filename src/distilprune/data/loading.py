"""Read labelled (or unlabelled) text tables: CSV, TSV, JSONL and JSON arrays.

The Kaggle disaster-tweet format (``id,keyword,location,text,target``), GLUE SST-2 TSV
(``sentence<TAB>label``) and the GLUE pair TSVs (QNLI ``question``/``sentence``, MNLI
``sentence1``/``sentence2``/``gold_label``, QQP ``question1``/``question2``/``is_duplicate``) are
recognised without flags.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from distilprune.errors import UserError, require, require_file

TEXT_COLUMNS = ("text", "sentence", "review", "content", "t")
LABEL_COLUMNS = ("target", "label", "labels", "sentiment", "gold_label", "is_duplicate", "s")
ID_COLUMNS = ("id", "index", "idx")
# (first text, second text) column pairs found without flags, in this order.
PAIR_COLUMNS = (("question", "sentence"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("premise", "hypothesis"), ("text", "text_pair"))
EXTRA_COLUMNS = ("keyword", "location")


@dataclass
class TextTable:
    """Texts (or text pairs: ``pairs`` holds the second texts) with optional integer labels, ids
    and extra per-record fields (keyword, location)."""

    texts: list[str]
    labels: list[int] | None
    ids: list[str]
    extras: list[dict[str, str]] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    source: str = ""
    sha256: str = ""
    pairs: list[str] | None = None
    columns: list[str] = field(default_factory=list)  # the text column(s) read

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> TextTable:
        """The rows at ``indices`` (order kept)."""
        return TextTable(
            texts=[self.texts[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],
            ids=[self.ids[i] for i in indices],
            extras=[self.extras[i] for i in indices] if self.extras else [],
            label_names=self.label_names,
            source=self.source,
            sha256=self.sha256,
            pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
            columns=self.columns,
        )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a bad line is named by its number."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}, line {number}: not valid JSON "
                                f"({exc.msg}, column {exc.colno})") from exc
            require(isinstance(record, dict), f"{path}, line {number}: expected a JSON object, "
                                              f"got {type(record).__name__}")
            records.append(record)
    return pd.DataFrame(records, dtype=object)


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    # index_col=False: a first row with one field more than the header must not turn the first
    # column into the index (every column would shift by one: texts read as labels); pandas warns
    # instead, and the warning is made an error below
    kwargs = {"dtype": str, "keep_default_na": False, "index_col": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            if suffix == ".csv":
                return pd.read_csv(path, **kwargs)
            if suffix == ".tsv":
                return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, **kwargs)
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if suffix == ".json":
            return pd.read_json(path, dtype=False)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): re-encode it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"{path} is empty") from exc
    except pd.errors.ParserWarning as exc:
        raise UserError(f"cannot parse {path}: a row has more fields than the header") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(f"cannot parse {path}: {reason}") from exc
    raise UserError(f"unsupported file type {suffix!r} for {path}: use .csv, .tsv, .jsonl or .json")


def _pick_column(frame: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], what: str,
                 path: Path, required: bool) -> str | None:
    columns = [str(c) for c in frame.columns]
    if wanted is not None:
        require(wanted in columns, f"{what} column {wanted!r} not in {path} (columns: {', '.join(columns)})")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    require(not required, f"no {what} column in {path} (columns: {', '.join(columns)}); "
                          f"pass --{what}-column")
    return None


def _cell(value: object) -> str:
    """A cell as text: JSON ``null`` and NaN become "" (never the strings "None" or "nan")."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _row_numbers(rows: list[int]) -> str:
    shown = ", ".join(str(r + 1) for r in rows[:5])
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _map_to_names(raw: list[str], names: Sequence[str], path: Path) -> tuple[list[int], list[str]]:
    """Labels as indices of a model's label names; values it was not trained on are an error."""
    index = {str(name): i for i, name in enumerate(names)}
    unknown = sorted(set(raw) - set(index))
    require(not unknown, f"{path}: label values {', '.join(map(repr, unknown[:6]))} are not labels of "
                         f"the model (its labels: {', '.join(index)})")
    return [index[v] for v in raw], list(index)


def encode_labels(values: list, path: Path, num_labels: int | None,
                  names: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """Map raw label values to 0..K-1: through ``names`` (a model's labels) when given; otherwise
    integers keep their value and strings are sorted."""
    raw = [_cell(v).strip() for v in values]
    empty = [i for i, v in enumerate(raw) if not v]
    require(not empty, f"{path} has rows with an empty label (data rows {_row_numbers(empty)})")
    if names:
        return _map_to_names(raw, names, path)
    distinct = sorted(set(raw))
    if all(v.lstrip("-").isdigit() for v in distinct):
        ints = [int(v) for v in raw]
        k = num_labels or max(ints) + 1
        bad = sorted({v for v in ints if not 0 <= v < k})
        require(not bad, f"{path}: labels must be integers in 0..{k - 1}, found {bad[:5]}"
                         + (" (binary labels expected)" if k == 2 else ""))
        return ints, [str(i) for i in range(k)]
    k = num_labels or len(distinct)
    require(len(distinct) <= k, f"{path}: expected {k} label values, found {len(distinct)}: "
                                f"{', '.join(distinct[:6])}")
    index = {name: i for i, name in enumerate(distinct)}
    return [index[v] for v in raw], distinct


def load_table(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    num_labels: int | None = 2,
    label_names: Sequence[str] | None = None,
    with_labels: bool = True,
    text_pair_column: str | None = None,
    pairs: bool | None = None,
) -> TextTable:
    """Load a text table; raise :class:`UserError` with a one-line reason on any bad input.

    ``label_names`` (a trained model's labels) fix the label ids; without them they come from the
    file. ``with_labels=False`` reads texts only (any label column is ignored). Rows whose text is
    empty, blank or ``null`` are refused with their row numbers. Text pairs: ``text_pair_column``,
    or found without flags (:data:`PAIR_COLUMNS`); ``pairs=True`` (a pair model) requires them,
    ``pairs=False`` reads single texts only.
    """
    path = Path(path)
    require_file(path, "data file")
    require(path.stat().st_size > 0, f"{path} is empty")
    frame = _read_frame(path)
    require(len(frame) > 0, f"{path} has no data rows")
    text_col, pair_col = _text_columns(frame, text_column, text_pair_column, path, pairs)
    label_col = (_pick_column(frame, label_column, LABEL_COLUMNS, "label", path, required=require_labels)
                 if with_labels else None)
    texts = _texts(frame, text_col, path)
    second = _texts(frame, pair_col, path) if pair_col else None
    labels, names = None, []
    if label_col is not None:
        labels, names = encode_labels(frame[label_col].tolist(), path, num_labels, label_names)
    id_col = _pick_column(frame, None, ID_COLUMNS, "id", path, required=False)
    ids = [_cell(v) for v in frame[id_col].tolist()] if id_col else [str(i) for i in range(len(frame))]
    extra_cols = [c for c in EXTRA_COLUMNS if c in frame.columns]
    rows = range(len(frame))
    extras = [{c: _cell(frame[c].iat[i]) for c in extra_cols} for i in rows] if extra_cols else []
    return TextTable(texts, labels, ids, extras, names, str(path), file_sha256(path), second,
                     [c for c in (text_col, pair_col) if c])


def _text_columns(frame: pd.DataFrame, text_column: str | None, pair_column: str | None, path: Path,
                  pairs: bool | None) -> tuple[str, str | None]:
    """``(text column, second text column or None)``: given, or found (:data:`PAIR_COLUMNS` first)."""
    if pair_column is not None or pairs is False:
        text = _pick_column(frame, text_column, TEXT_COLUMNS, "text", path, required=True)
        pair = (_pick_column(frame, pair_column, (), "text-pair", path, required=True)
                if pair_column is not None else None)
        return text, pair  # type: ignore[return-value]
    lowered = {str(c).lower(): str(c) for c in frame.columns}
    if text_column is None:
        for first, second in PAIR_COLUMNS:
            if first in lowered and second in lowered:
                return lowered[first], lowered[second]
    text = _pick_column(frame, text_column, TEXT_COLUMNS, "text", path, required=True)
    require(not pairs, f"{path} has no second text column (columns: {', '.join(lowered.values())}): "
                       "the model was trained on text pairs; pass --text-pair-column")
    return text, None  # type: ignore[return-value]


def _texts(frame: pd.DataFrame, column: str, path: Path) -> list[str]:
    """The column's texts; an all-empty column or blank rows are refused (with row numbers)."""
    texts = [_cell(t) for t in frame[column].tolist()]
    require(any(t.strip() for t in texts), f"{path}: the text column {column!r} is empty")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    require(not blank, f"{path}: {len(blank)} rows have an empty text (data rows {_row_numbers(blank)}); "
                       "fill or remove them")
    return texts


def class_balance(labels: list[int], label_names: list[str]) -> dict[str, float]:
    """Share of each class, keyed by label name."""
    total = len(labels)
    return {name: labels.count(i) / total for i, name in enumerate(label_names)}
