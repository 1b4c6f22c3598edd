"""Shared fixtures: tiny random models of every architecture, real data paths, thread limits."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

ARCHITECTURES = ("bert", "roberta", "distilbert", "xlnet", "mpnet")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SAMPLE_TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "All residents asked to 'shelter in place' are being notified by officers.",
    "13,000 people receive #wildfires evacuation orders in California",
    "I love fruits and the summer is lovely",
    "What a wonderful day to go to the beach",
    "My car is so fast it is on fire lol",
    "Earthquake hits the city, buildings collapsed and people injured",
    "this movie was the bomb, totally explosive fun",
]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``make(arch, num_layers=4)`` -> directory of a saved tiny random classifier (cached)."""
    from distilprune.models.tiny import build_tiny_model

    cache: dict[tuple[str, int], Path] = {}

    def make(arch: str, num_layers: int = 4) -> Path:
        key = (arch, num_layers)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{num_layers}")
            cache[key] = build_tiny_model(arch, out / "model", SAMPLE_TEXTS, num_layers=num_layers)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder beside the repo (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """A small labelled CSV in the Kaggle disaster format."""
    import csv

    path = tmp_path / "tiny.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "keyword", "location", "text", "target"])
        for i in range(40):
            text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
            label = int(any(w in text.lower() for w in ("fire", "earthquake", "evacuation", "shelter")))
            writer.writerow([i, "fire" if label else "", "", f"{text} #{i}", label])
    return path


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_cli(monkeypatch, capfd, *args: str | Path) -> tuple[int, str, str]:
    """Run ``distilprune ARGS`` in-process; returns ``(exit code, stdout, stderr)``."""
    capfd.readouterr()
    monkeypatch.setattr(sys, "argv", ["distilprune", *map(str, args)])
    code = 0
    try:
        from distilprune import cli

        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, ANSI.sub("", out), ANSI.sub("", err)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (``None`` for directories)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def assert_user_error(monkeypatch, capfd, root: Path, args: list, fragment: str) -> str:
    """The command fails with exit 2 and one ``error: ...`` line; ``root`` is left unchanged."""
    before = snapshot(root)
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert fragment.lower() in lines[0].lower(), err
    assert snapshot(root) == before, "the failed command changed the file system"
    return lines[0]
