"""The one staging engine: skip work whose output is already there, made from the same inputs.

A stage is an output folder plus the inputs that decide its result (config sections, file
digests, upstream hashes). When the work finishes, ``<out>/stage.json`` is written last: the
hash of those inputs, the inputs themselves (so a mismatch can name what changed), a run id,
the run ids of the upstream outputs it consumed, timings and the work's summary. A stage whose
record matches is skipped; the stage graph (``jobs/graph.py``: ``stages:`` recipes, the Prune OFA
pipeline compiled into one, the benchmark recipes) and the study's grid of fine-tunes
(``jobs/study.py``) stage through here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilprune.data.loading import file_sha256
from distilprune.errors import UserError, require
from distilprune.io import read_json, stable_hash, write_json

log = logging.getLogger("distilprune.staging")

STAGE_FILE = "stage.json"
# How to run or where to write, not what comes out: left out of every hash.
UNHASHED = frozenset({"out", "overwrite", "log_every", "checkpoint_every", "checkpoint_dir", "resume"})


def hashable(value: Any) -> Any:
    """``value`` without the keys that do not change a result (:data:`UNHASHED`), paths as text."""
    if isinstance(value, Mapping):
        return {str(k): hashable(v) for k, v in value.items() if k not in UNHASHED}
    if isinstance(value, list | tuple):
        return [hashable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def file_digests(paths: Iterable[str | Path], what: str) -> list[str]:
    """SHA-256 of each file (results follow file contents, not paths); a missing one is a
    :class:`UserError` naming ``what`` it is."""
    digests = []
    for path in map(Path, paths):
        require(path.is_file(), f"{what} not found: {path}")
        digests.append(file_sha256(path))
    return digests


@dataclass
class Stage:
    """One piece of skippable work: where it writes and what decides its result.

    ``upstream`` names the stages whose outputs it consumes; ``upstream_runs`` holds the run ids
    of those outputs as they are now (a stage made from an older upstream output is stale).
    """

    name: str
    out: Path
    inputs: Mapping[str, Any]
    upstream: tuple[str, ...] = ()
    upstream_runs: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return stable_hash({"stage": self.name, "inputs": hashable(self.inputs)})


def read_record(out: str | Path) -> dict[str, Any] | None:
    """The ``stage.json`` of a finished stage, or ``None`` (missing or unreadable)."""
    path = Path(out) / STAGE_FILE
    try:
        return read_json(path) if path.is_file() else None
    except UserError:
        return None


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``dotted.key=old, now new`` for every place two input trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for name in sorted(set(old) | set(new))
                for change in differences(old.get(name), new.get(name), f"{key}.{name}".lstrip("."))]
    return [] if old == new else [f"{key or 'inputs'}={old!r}, now {new!r}"]


def staleness(stage: Stage, record: dict[str, Any] | None) -> str | None:
    """Why ``stage`` must (re-)run, or ``None`` when ``record`` shows its output is up to date."""
    if record is None:
        return "no finished output"
    if record.get("hash") != stage.hash:
        changed = differences(record["inputs"], hashable(stage.inputs)) if "inputs" in record else []
        shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
        return f"its inputs changed ({shown})" if changed else "its inputs changed"
    if len(stage.upstream_runs) != len(stage.upstream):
        return "an upstream stage is not up to date"
    made_from = record.get("upstream") or {}
    changed_upstream = [u for u, run in stage.upstream_runs.items() if made_from.get(u) != run]
    return f"upstream {', '.join(changed_upstream)} re-ran" if changed_upstream else None


def run_stage(stage: Stage, work: Callable[[], Any], reason: str = "forced") -> dict[str, Any]:
    """Do ``work()`` (it writes ``stage.out``) and then the record that marks the stage done."""
    log.info("stage %s: running (%s)", stage.name, reason)
    start = time.perf_counter()
    summary = work()
    seconds = round(time.perf_counter() - start, 1)
    record = {"stage": stage.name, "hash": stage.hash, "inputs": hashable(stage.inputs),
              "run_id": uuid.uuid4().hex, "upstream": dict(stage.upstream_runs), "seconds": seconds,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary}
    write_json(stage.out / STAGE_FILE, record)  # last: marks the stage as done
    log.info("stage %s: done in %.1f s", stage.name, seconds)
    return read_json(stage.out / STAGE_FILE)


def select_stages(available: Sequence[str], stages: str | Sequence[str] | None,
                  rename: Callable[[str], str] = str) -> list[str]:
    """``"a,b"`` (or a list; each name through ``rename``) -> names checked against ``available``;
    ``None``: all of them."""
    if stages is None:
        return list(available)
    names = [rename(n.strip()) for n in (stages.split(",") if isinstance(stages, str) else stages)
             if n.strip()]
    unknown = [n for n in names if n not in available]
    require(not unknown, f"unknown stage {unknown[0]!r}; the stages: {', '.join(available)}"
            if unknown else "")
    require(bool(names), f"no stages selected; choose among {', '.join(available)}")
    return names


def run_stages(planned: Mapping[str, Stage], work: Callable[[str, dict[str, dict]], Any],
               selected: Iterable[str], force: bool = False,
               dry: bool = False) -> tuple[dict[str, str], dict[str, dict]]:
    """Run the ``selected`` of the ``planned`` stages (in order, upstream first) that are not up to
    date (all of them with ``force``): ``work(name, records)`` makes one, given the records of the
    stages before it. Returns each stage's status (``ran``, ``skipped`` when up to date, ``not
    selected``) and the records. A stage to run whose upstream is missing or out of date and not
    selected is a :class:`UserError`; ``dry`` runs and logs nothing, it only checks that."""
    selected = set(selected)
    records: dict[str, dict] = {}
    status: dict[str, str] = {}
    for name, stage in planned.items():
        stage.upstream_runs = {u: records[u]["run_id"] for u in stage.upstream if u in records}
        record = read_record(stage.out)
        reason = staleness(stage, record)
        if name not in selected or (reason is None and not force):
            status[name] = "skipped" if name in selected else "not selected"
            if record is not None and reason is None:
                records[name] = record
            if not dry:
                log.info("stage %s: %s", name, "up to date, skipped" if reason is None
                         else f"not selected (out of date: {reason})")
            continue
        missing = [u for u in stage.upstream if u not in records]
        require(not missing, f"stage {name!r} needs the output of {', '.join(map(repr, missing))}, "
                             "which is missing or out of date: include it in the selected stages")
        records[name] = ({"run_id": f"planned-{name}"} if dry else run_stage(
            stage, lambda name=name: work(name, records), reason or "forced"))
        status[name] = "ran"
    return status, records


__all__ = ["STAGE_FILE", "UNHASHED", "Stage", "file_digests", "differences", "hashable",
           "read_record", "run_stage", "run_stages", "select_stages", "staleness"]
