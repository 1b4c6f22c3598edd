"""Helpers shared by the benchmark scripts (paths, result files, markdown tables)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distilprune.data.preprocess import DEFAULT_TWEET_STEPS
from distilprune.data.shared import shared_data_dir
from distilprune.errors import UserError
from distilprune.jobs.common import DataConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Fine-tuned models shared between benchmarks (git-ignored); point it elsewhere to keep them.
WORK = Path(os.environ.get("DISTILPRUNE_BENCH_WORK", ROOT / "benchmarks" / "work"))
DATA = shared_data_dir()  # ../shared/data beside the repository (or $DISTILPRUNE_SHARED_DATA)
DISASTER_TRAIN = DATA / "disaster_tweets" / "train.csv"
DISASTER_TEST = DATA / "disaster_tweets" / "test.csv"
PREPROCESS = ["keyword", *DEFAULT_TWEET_STEPS]  # the benchmarks' tweet preprocessing


def data_config(preprocess: bool) -> DataConfig:
    """The disaster-tweets split every benchmark shares: stratified 15 % validation (seed 42),
    96 tokens, the tweet preprocessing (``keyword`` + the default tweet steps) when asked."""
    return DataConfig(train=str(DISASTER_TRAIN), val_fraction=0.15, split_seed=42, max_length=96,
                      preprocess=PREPROCESS if preprocess else [])


def check_split(recipe: Any, names: list[str], preprocessed: Callable[[str], bool]) -> None:
    """The recipe's ``names`` fine-tune on the shared split (:func:`data_config`), with the tweet
    preprocessing where ``preprocessed(name)``: one drifting would compare unlike runs."""
    from distilprune.jobs.graph import job_config

    for name in names:
        data = job_config(recipe.stages[name], Path(recipe.out))[0].data
        expected = data_config(preprocessed(name))
        same = (Path(data.train).resolve() == Path(expected.train).resolve()
                and (data.val_fraction, data.split_seed, data.max_length, data.preprocess)
                == (expected.val_fraction, expected.split_seed, expected.max_length, expected.preprocess))
        if not same:
            raise SystemExit(f"stage {name} is not on the shared split (preprocess: {expected.preprocess})")


def require_data() -> None:
    if not DISASTER_TRAIN.is_file():
        raise SystemExit(f"benchmark data missing: {DISASTER_TRAIN}")


def result_path(name: str, suffix: str) -> Path:
    """``results/<name><suffix>``, its folder created: ``name`` may be ``trials/<stem>`` (trial and
    variant runs go to ``results/trials/``, beside their own json/md/png)."""
    path = RESULTS / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (``name`` may be ``trials/<stem>``)."""
    from distilprune.io import atomic_file, write_json

    write_json(result_path(name, ".json"), payload)
    with atomic_file(result_path(name, ".md")) as handle:
        handle.write(markdown)


def load_summary(model_dir: Path, name: str = "distilprune.json") -> dict[str, Any] | None:
    """The saved summary of a finished run, ``distilprune.json`` (``export.json`` for an
    export), or None (benchmarks resume by skipping finished runs)."""
    meta = model_dir / name
    return json.loads(meta.read_text()) if meta.is_file() else None


def staged(out: Path, run: Callable[[], Any], expect: Mapping[str, Any] | None = None) -> Any:
    """``run()`` (it writes ``out``) unless ``out`` holds a finished stage made from the same
    ``expect`` (e.g. ``{"config.train.max_steps": 1015}``); returns what ``run()`` returned then.

    distilprune's staging engine decides; paths are compared resolved, so a stage linked in
    from another work directory still matches. A stage made from other inputs stops the run in
    one line (trials share stages: one must not overwrite another's).
    """
    from distilprune.errors import UserError
    from distilprune.jobs.staging import Stage, ensure

    inputs = {key: value.resolve() if isinstance(value, Path) else value
              for key, value in (expect or {}).items()}
    start = time.perf_counter()
    try:
        record, ran = ensure(Stage(out.name, out, inputs), run, refuse_stale=True)
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    if ran:
        print(f"[stage] {out.name} done in {time.perf_counter() - start:.0f}s", flush=True)
    return record["summary"]


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a bad input (a --set key, a stage name, a missing file)
    is one line on stderr and exit 2, as in the CLI, not a traceback."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
