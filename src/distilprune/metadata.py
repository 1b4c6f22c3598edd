"""The ``distilprune.json`` beside the weights of every model directory distilprune trains:
what the model was trained on (labels, preprocessing, max length, metrics, environment).

Torch-free: exporters, loaders and jobs all read it through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distilprune.errors import UserError

METADATA_FILE = "distilprune.json"


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """The ``distilprune.json`` of a model directory, or ``{}`` for foreign models."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt: {exc.msg}") from exc


def trained_label_names(meta: dict[str, Any], id2label: Mapping[Any, Any]) -> list[str] | None:
    """The labels a classifier was trained with: its ``distilprune.json``, else a ``config.id2label``
    other than transformers' default ``LABEL_i``; ``None`` when it never recorded any."""
    if meta.get("label_names"):
        return [str(name) for name in meta["label_names"]]
    names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    return names if names and names != [f"LABEL_{i}" for i in range(len(names))] else None
