"""The ``shrink`` job: structurally shrink a saved classifier directory into a new one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distilprune.io import atomic_dir
from distilprune.jobs.common import check_output_dir, read_metadata, save_model_dir
from distilprune.models.base import load_tokenizer, require_weights
from distilprune.reporting.modelcard import write_model_card
from distilprune.shrink import ShrinkReport, load_shrunk, prune_heads_and_neurons


def shrink_dir(model: str | Path, out: str | Path, head_fraction: float = 0.0,
               neuron_fraction: float = 0.0, overwrite: bool = False) -> ShrinkReport:
    """Shrink the classifier directory ``model`` into ``out`` (written atomically, metadata kept)."""
    check_output_dir(Path(out), overwrite)
    require_weights(model)
    net = load_shrunk(model)
    report = prune_heads_and_neurons(net, head_fraction, neuron_fraction)
    with atomic_dir(Path(out), overwrite) as tmp:
        save_model_dir(tmp, net, load_tokenizer(str(model)), {**read_metadata(model), "shrink": vars(report)})
        write_model_card(tmp)  # the copied metrics are the unshrunk model's
    return report


@dataclasses.dataclass
class ShrinkConfig:
    """``distilprune shrink``: remove the ``heads`` fraction of attention heads and the ``neurons``
    fraction of every layer's FFN neurons of ``model`` into ``out``."""

    model: str = ""
    out: str = ""
    heads: float = 0.0
    neurons: float = 0.0
    overwrite: bool = False


def shrink_model(cfg: ShrinkConfig) -> dict[str, Any]:
    """The ``shrink`` stage kind: :func:`shrink_dir`; returns its report as a mapping."""
    from distilprune.jobs.deploy import local

    return dataclasses.asdict(shrink_dir(local(cfg.model), cfg.out, cfg.heads, cfg.neurons, cfg.overwrite))
