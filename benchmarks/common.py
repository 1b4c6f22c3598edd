"""Helpers shared by the benchmark scripts (paths, result files, markdown tables)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
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


def graph_recipe(data: dict[str, Any], overrides: dict[str, Any], args: Any) -> Any:
    """A benchmark's recipe mapping with this run's ``overrides`` (a ``None`` there keeps the
    recipe's value) and then its ``--set`` assignments (``args.assignments``; these may set
    ``null``), parsed as a stage graph writing to ``args.work``."""
    from distilprune.config import dotted_overrides, merge
    from distilprune.jobs.graph import parse_graph

    return parse_graph(merge(merge(data, overrides), dotted_overrides(args.assignments), keep_none=True),
                       str(args.work))


def write_split(folder: Path, data: Any) -> dict[str, Path]:
    """``data``'s (a :func:`data_config` split's) training and validation texts as
    ``folder/{train,val}.csv`` (text, target): the calibration and parity texts of a recipe's
    export stages, in the split's order. Written on every run, so they follow the data file (the
    same content leaves the stages reading them up to date)."""
    import pandas as pd

    from distilprune.io import atomic_file

    paths = {"train": folder / "train.csv", "val": folder / "val.csv"}
    for part, table in (("train", data.train), ("val", data.val)):
        with atomic_file(paths[part]) as handle:
            pd.DataFrame({"text": table.texts, "target": table.labels}).to_csv(handle, index=False)
    return paths


def split_settings(body: dict[str, Any], split: dict[str, Path]) -> dict[str, Any]:
    """A recipe stage's data settings on the shared split, as absolute paths: an ONNX export's
    parity texts and a static quantization's parity texts are the validation file's, its
    calibration texts the training file's (:func:`write_split`); a fine-tune reads the shared
    training file (from any working directory)."""
    if body["kind"] == "export" and body.get("format", "onnx") == "onnx":
        return {"data": str(split["val"])}
    if body["kind"] == "quantize":
        return {"data": str(split["train"]), "parity_data": str(split["val"])}
    if body["kind"] == "finetune":
        return {"data": {"train": str(DISASTER_TRAIN)}}
    return {}


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


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a bad input (a --set key, a stage name, a missing file)
    is one line on stderr and exit 2, as in the CLI, not a traceback."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
