"""Progress bars for long inference loops (teacher logits, evaluate, predict), styled like the
training loop's: tqdm on stderr, shown only when stderr is a terminal (``TQDM_DISABLE=1`` hides
them everywhere)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np
from tqdm.auto import tqdm

CHUNK = 256  # texts per progress update; a multiple of every inference batch size (32, 64)


def _wanted(stream: TextIO) -> bool:
    """Whether to draw a bar on ``stream`` (a terminal, not a log file or a pipe)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int, desc: str, file: TextIO | None = None) -> tqdm:
    """A ``texts`` bar of ``total`` on stderr, disabled when stderr is not a terminal."""
    stream = file or sys.stderr
    return tqdm(total=total, desc=desc, unit="text", file=stream, dynamic_ncols=True,
                disable=not _wanted(stream))


def chunked(predict: Callable[[list[str]], np.ndarray], texts: Sequence[str], bar: tqdm) -> np.ndarray:
    """``predict(texts)`` in chunks of :data:`CHUNK`, advancing ``bar`` (same logits as one call when
    ``predict`` batches texts in order)."""
    texts = list(texts)
    parts = []
    for start in range(0, len(texts), CHUNK):
        parts.append(predict(texts[start:start + CHUNK]))
        bar.update(len(parts[-1]))
    return np.concatenate(parts, axis=0) if parts else predict(texts)
