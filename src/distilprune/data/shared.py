"""Where the shared data sets live: ``shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "DISTILPRUNE_SHARED_DATA"


def shared_data_dir() -> Path:
    """The ``shared/data`` folder beside the repository: ``$DISTILPRUNE_SHARED_DATA`` if set, else
    beside the source checkout this package is imported from (the same from any working
    directory), else ``../shared/data`` of the working directory (an installed package)."""
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV])
    checkout = Path(__file__).resolve().parents[3]
    candidates = [checkout.parent / "shared" / "data"] if (checkout / "pyproject.toml").is_file() else []
    candidates.append(Path.cwd().parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[-1])
