"""Stratified train/validation split with a fixed seed."""

from __future__ import annotations

import math

from sklearn.model_selection import train_test_split

from distilprune.errors import require


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Return sorted ``(train_indices, val_indices)``, stratified by label."""
    require(0.0 < val_fraction < 1.0, f"validation fraction must be in (0, 1), got {val_fraction}")
    counts = {label: labels.count(label) for label in set(labels)}
    require(min(counts.values()) >= 2, "every class needs at least 2 examples to split off a validation set")
    n_val = math.ceil(val_fraction * len(labels))  # how scikit-learn sizes the test part
    require(len(counts) <= min(n_val, len(labels) - n_val),
            f"a {val_fraction:g} validation split of {len(labels)} rows holds {n_val} rows, fewer than "
            f"the {len(counts)} classes (or leaves too few to train): change --val-fraction or pass "
            "--validation")
    indices = list(range(len(labels)))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=labels
    )
    return sorted(train_idx), sorted(val_idx)
