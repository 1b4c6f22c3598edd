"""The staging engine shared by pipelines, studies and benchmarks: skip, re-run, refuse, record."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilprune.errors import UserError
from distilprune.jobs.staging import (
    STAGE_FILE,
    Stage,
    file_digests,
    read_record,
    run_stage,
    run_stages,
    staleness,
)


def make(out: Path, calls: list[str]):
    """A piece of work that writes ``out`` and counts its runs."""

    def work() -> dict:
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.txt").write_text("weights")
        calls.append(out.name)
        return {"accuracy": 0.9}

    return work


def ensure(one: Stage, work) -> tuple[dict, bool]:
    """One stage through the engine: its record and whether it ran (or was up to date)."""
    status, records = run_stages({one.name: one}, lambda name, records: work(), [one.name])
    return records[one.name], status[one.name] == "ran"


def stage(out: Path, **inputs) -> Stage:
    return Stage("finetune", out, {"train": {"lr": 1e-4, "max_steps": 10, "log_every": 5}, **inputs})


def test_a_finished_stage_is_skipped_and_its_summary_kept(tmp_path):
    calls: list[str] = []
    record, ran = ensure(stage(tmp_path / "ft"), make(tmp_path / "ft", calls))
    assert ran and record["summary"] == {"accuracy": 0.9} and len(record["run_id"]) == 32
    again, ran = ensure(stage(tmp_path / "ft"), make(tmp_path / "ft", calls))
    assert not ran and again["run_id"] == record["run_id"] and calls == ["ft"]


def test_changed_inputs_rerun_and_name_the_change(tmp_path):
    calls: list[str] = []
    ensure(stage(tmp_path / "ft"), make(tmp_path / "ft", calls))
    changed = Stage("finetune", tmp_path / "ft", {"train": {"lr": 5e-5, "max_steps": 10}})
    reason = staleness(changed, read_record(tmp_path / "ft"))
    assert reason == "its inputs changed (train.lr=0.0001, now 5e-05)"
    _, ran = ensure(changed, make(tmp_path / "ft", calls))
    assert ran and calls == ["ft", "ft"]


def test_how_to_run_is_not_what_comes_out(tmp_path):
    """``log_every``, ``out``, checkpointing: not hashed, so changing them reuses the stage."""
    base = stage(tmp_path / "a")
    moved = Stage("finetune", tmp_path / "b", {"train": {"lr": 1e-4, "max_steps": 10, "log_every": 1,
                                                          "checkpoint_every": 3}, "out": "elsewhere"})
    assert moved.hash == base.hash
    assert Stage("distill", tmp_path / "a", base.inputs).hash != base.hash  # the kind of stage counts


def test_a_stage_made_from_an_older_upstream_output_is_stale(tmp_path):
    calls: list[str] = []
    child = Stage("qat", tmp_path / "qat", {"steps": 1}, upstream=("finetune",),
                  upstream_runs={"finetune": "run-1"})
    run_stage(child, make(tmp_path / "qat", calls))
    assert staleness(child, read_record(tmp_path / "qat")) is None
    child.upstream_runs = {"finetune": "run-2"}
    assert staleness(child, read_record(tmp_path / "qat")) == "upstream finetune re-ran"
    child.upstream_runs = {}
    assert staleness(child, read_record(tmp_path / "qat")) == "an upstream stage is not up to date"


def test_failed_work_leaves_no_record_and_runs_again(tmp_path):
    out = tmp_path / "ft"

    def crash() -> dict:
        out.mkdir()
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ensure(stage(out), crash)
    assert not (out / STAGE_FILE).exists() and read_record(out) is None
    calls: list[str] = []
    _, ran = ensure(stage(out), make(out, calls))
    assert ran and calls == ["ft"]


def test_an_unreadable_record_means_not_finished(tmp_path):
    (tmp_path / STAGE_FILE).write_text("{not json")
    assert read_record(tmp_path) is None


def test_file_digests_follow_content_not_path(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("text,label\nx,1\n")
    b.write_text("text,label\nx,1\n")
    assert file_digests([a], "data file") == file_digests([b], "data file")
    b.write_text("text,label\nx,0\n")
    assert file_digests([a], "data file") != file_digests([b], "data file")
    with pytest.raises(UserError, match="data file not found: .*missing.csv"):
        file_digests([tmp_path / "missing.csv"], "data file")
