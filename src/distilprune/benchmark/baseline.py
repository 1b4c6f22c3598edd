"""TF-IDF + logistic regression: the seconds-to-train baseline a compressed model has to beat.

Word 1-2 grams and character 2-5 grams (sublinear TF), one logistic regression. It is fitted on
the training split and benchmarked in-process beside the transformer models, with the same
latency protocol (:func:`distilprune.engine.timing.measure`) and the same accuracy function.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilprune.reporting.benchmark import BASELINE_NAME


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[int]) -> Any:
    """A fitted scikit-learn pipeline: TF-IDF word + character n-grams -> logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    min_df = 2 if len(texts) >= 100 else 1  # a tiny set would keep no n-gram seen twice
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(C=4.0, max_iter=2000)).fit(list(texts), list(labels))


def baseline_logits(model: Any, texts: Sequence[str]) -> np.ndarray:
    """Log-probabilities (usable as logits: same argmax and softmax) of the baseline."""
    return np.log(model.predict_proba(list(texts)) + 1e-12)


class TfidfRunner:
    """The fitted baseline behind the benchmark's Runner protocol (texts in, logits out)."""

    kind = BASELINE_NAME
    max_length = 0

    def __init__(self, model: Any) -> None:
        self.model, self.path = model, Path(BASELINE_NAME)

    def set_threads(self, threads: int) -> None:
        """scikit-learn's sparse matrix products run on one thread: nothing to set."""

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> list[str]:
        return list(texts)  # the vectorizer tokenizes inside ``run``: its cost is latency

    def run(self, batch: list[str]) -> np.ndarray:
        return baseline_logits(self.model, batch)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return baseline_logits(self.model, texts)

    def info(self) -> dict[str, Any]:
        """Pickled size and the number of logistic-regression weights."""
        head = self.model[-1]
        return {"size_bytes": len(pickle.dumps(self.model)),
                "params": int(head.coef_.size + head.intercept_.size), "nonzero_params": None}


def benchmark_baseline(train_texts: Sequence[str], train_labels: Sequence[int], texts: Sequence[str],
                       labels: Sequence[int] | None, **settings: Any) -> dict[str, Any]:
    """Fit the baseline and measure it like :func:`~distilprune.benchmark.speed.benchmark_one`
    (``settings``: its threads, batch_sizes, seq_len, warmup, repeats)."""
    import time

    from distilprune.benchmark.speed import accuracy, measure

    start = time.perf_counter()
    runner = TfidfRunner(fit_tfidf_logreg(train_texts, train_labels))
    result = measure(runner, texts, **settings)
    result.update(runner.info(), name=BASELINE_NAME, spec=BASELINE_NAME, path=BASELINE_NAME,
                  fit_s=time.perf_counter() - start, peak_rss_mb=None, threads=1)
    result["size_mb"] = result["size_bytes"] / 1e6
    if labels is not None:
        result.update(accuracy(runner, texts, labels))
    return result
