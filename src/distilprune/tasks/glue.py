"""GLUE's predictions file (``index<TAB>prediction``). GLUE TSVs themselves (GLUE's quirks:
unquoted fields that may hold quote marks, ``null`` or ``NA`` kept as text) are read by
:func:`distilprune.data.loading.load_table`, like every table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distilprune.errors import require
from distilprune.io import atomic_file


def write_glue_predictions(path: str | Path, indices: Sequence[Any], labels: Sequence[Any]) -> None:
    """``index<TAB>prediction`` with a header line (GLUE's submission format), written atomically."""
    require(len(indices) == len(labels), f"{len(labels)} predictions for {len(indices)} indices")
    rows = [f"{index}\t{label}" for index, label in zip(indices, labels, strict=True)]
    bad = next((row for row in rows if re.search(r"[\n\r]", row) or row.count("\t") != 1), None)
    require(bad is None, f"a tab or line break inside an index or prediction: {bad!r}")
    with atomic_file(path, "wb") as handle:
        handle.write("\n".join(["index\tprediction", *rows, ""]).encode("utf-8"))
