"""Benchmark runners, measure(), accuracy(), per-model subprocesses and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distilprune.benchmark import (
    OnnxRunner,
    TorchRunner,
    accuracy,
    benchmark_models,
    load_runner,
    measure,
    run_benchmark,
    write_report,
)
from distilprune.benchmark.speed import model_names
from distilprune.errors import UserError
from distilprune.export import export_onnx
from distilprune.reporting.benchmark import pareto_front

TEXTS = [
    "Forest fire near La Ronge Sask. Canada",
    "I love fruits",
    "13,000 people receive #wildfires evacuation orders in California",
    "What a wonderful day to go to the beach",
]
LABELS = [1, 0, 1, 0]
LATENCY_KEYS = {"p50_ms", "p95_ms", "mean_ms", "min_ms", "throughput"}


@pytest.fixture(scope="module")
def models(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    torch_dir = tiny_model_factory("bert", num_layers=2)
    onnx_dir = tmp_path_factory.mktemp("bench") / "onnx"
    export_onnx(torch_dir, onnx_dir, parity_texts=TEXTS)
    return {"torch": torch_dir, "onnx": onnx_dir}


def test_load_runner_picks_by_content(models, tmp_path):
    assert isinstance(load_runner(models["torch"], 1), TorchRunner)
    assert load_runner(f"{models['torch']}@int8", 1).kind == "torch-int8"
    assert isinstance(load_runner(models["onnx"], 1), OnnxRunner)
    assert load_runner(models["onnx"] / "model.onnx", 1).kind == "onnx"
    with pytest.raises(UserError, match="neither"):
        load_runner(tmp_path, 1)
    with pytest.raises(UserError, match="not found"):
        load_runner(tmp_path / "missing", 1)
    with pytest.raises(UserError, match="@int8"):
        load_runner(f"{models['onnx']}@int8", 1)


@pytest.mark.parametrize("spec", ["torch", "torch@int8", "onnx"])
def test_measure_returns_sane_numbers(models, spec):
    name, _, suffix = spec.partition("@")
    runner = load_runner(f"{models[name]}@{suffix}" if suffix else models[name], 1)
    batch = runner.encode(TEXTS[:3], pad_to=24)
    assert all(tuple(v.shape) == (3, 24) for v in batch.values())
    result = measure(runner, TEXTS, batch_sizes=(1, 4), seq_len=24, warmup=1, repeats=3,
                     threads=1)
    assert set(result["latency"]) == {"1", "4"}
    for stats in result["latency"].values():
        assert set(stats) == LATENCY_KEYS
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"]
        assert stats["throughput"] > 0
    assert result["seq_len"] == 24 and result["threads"] == 1 and result["throughput"] > 0
    info = runner.info()
    assert info["size_bytes"] > 0 and info["params"] > 0


def test_torch_runner_loads_compact_models(models, tmp_path):
    from distilprune.export.storage import save_compact

    save_compact(models["torch"], tmp_path / "compact", int8=True)
    runner = load_runner(tmp_path / "compact", 1)
    plain = load_runner(models["torch"], 1)
    assert runner.info()["size_bytes"] < plain.info()["size_bytes"]
    np.testing.assert_allclose(runner.predict_logits(TEXTS), plain.predict_logits(TEXTS),
                               atol=0.05)


def test_measure_rejects_too_long_sequences(models):
    with pytest.raises(UserError, match="sequence length"):
        measure(load_runner(models["onnx"], 1), TEXTS, seq_len=4096, repeats=1)


def test_accuracy_agrees_between_torch_and_onnx(models):
    scores = [accuracy(load_runner(models[k], 1), TEXTS, LABELS) for k in ("torch", "onnx")]
    assert scores[0] == scores[1]
    assert 0.0 <= scores[0]["accuracy"] <= 1.0 and 0.0 <= scores[0]["f1"] <= 1.0
    with pytest.raises(UserError, match="labels"):
        accuracy(load_runner(models["onnx"], 1), TEXTS, LABELS[:2])


def test_torch_runner_counts_parameters(models):
    runner = load_runner(models["torch"], 1)
    assert isinstance(runner, TorchRunner)
    info = runner.info()
    assert 0 < info["nonzero_params"] <= info["params"]
    int8 = load_runner(f"{models['torch']}@int8", 1)
    assert int8.info()["params"] == info["params"]
    np.testing.assert_allclose(int8.predict_logits(TEXTS), runner.predict_logits(TEXTS),
                               atol=0.05)


def test_run_benchmark_subprocesses_and_report(models, tmp_path):
    report = run_benchmark([str(models["torch"]), str(models["onnx"])], TEXTS, LABELS,
                           tmp_path / "bench", threads=1, batch_sizes=(1, 2), seq_len=16,
                           repeats=2, warmup=1)
    files = {k: Path(v) for k, v in report["files"].items()}
    assert all(p.is_file() for p in files.values())
    payload = json.loads(files["json"].read_text())
    base, onnx = payload["models"]
    assert payload["baseline"] == base["name"] == models["torch"].name
    assert base["ratios"]["speedup_b1"] == 1.0 and base["ratios"]["size"] == 1.0
    assert onnx["kind"] == "onnx" and onnx["accuracy"] == base["accuracy"]
    # each model ran in its own process: the ONNX one never imported torch
    assert 0 < onnx["peak_rss_mb"] < base["peak_rss_mb"]
    text = files["md"].read_text()
    assert "Speed-up b2" in text and "Size ×" in text and "1.00×" in text
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_child_errors_become_user_errors(models):
    with pytest.raises(UserError, match="sequence length"):
        benchmark_models([str(models["onnx"])], TEXTS, seq_len=4096, repeats=1)
    with pytest.raises(UserError, match="not found"):
        benchmark_models(["/no/such/model"], TEXTS)


def _fake(name: str, p50: float, size: float, acc: float | None = None) -> dict:
    latency = {b: {"p50_ms": p50 * int(b), "p95_ms": p50 * int(b) * 1.2, "mean_ms": p50,
                   "min_ms": p50, "throughput": 1000 / p50} for b in ("1", "8")}
    return {"name": name, "kind": "onnx", "latency": latency, "throughput": 1000 / p50,
            "size_bytes": size * 1e6, "size_mb": size, "params": 1_000_000,
            "nonzero_params": 400_000, "peak_rss_mb": 100.0, "accuracy": acc, "f1": acc,
            "seq_len": 128, "threads": 2, "repeats": 20, "warmup": 3}


@pytest.mark.parametrize("acc", [None, 0.8])
def test_write_report_ratios_relative_to_first(tmp_path, acc):
    results = [_fake("base", 10.0, 100.0, acc), _fake("small", 5.0, 25.0, acc)]
    out = {ext: tmp_path / f"r.{ext}" for ext in ("json", "md", "png")}
    payload = write_report(results, out["json"], out["md"], out["png"])
    ratios = payload["models"][1]["ratios"]
    assert ratios["speedup_b8"] == pytest.approx(2.0) and ratios["size"] == pytest.approx(0.25)
    text = out["md"].read_text()
    assert "| small |" in text and "2.00×" in text and "0.25×" in text
    assert "1.00M (0.40M non-zero)" in text
    assert json.loads(out["json"].read_text())["baseline"] == "base"
    assert out["png"].stat().st_size > 1000


def test_pareto_front_and_names():
    points = [(10.0, 0.9), (5.0, 0.85), (12.0, 0.8), (5.0, 0.8)]
    assert pareto_front(points, maximize_y=True) == [1, 0]
    assert pareto_front(points, maximize_y=False) == [3]
    assert model_names(["/a/model", "/b/model", "/a/x@int8"]) == ["a/model", "b/model", "x@int8"]


def test_tfidf_baseline_is_measured_like_a_model():
    from distilprune.benchmark.baseline import BASELINE_NAME, benchmark_baseline

    words = {0: ["calm", "sunny", "lovely", "quiet"], 1: ["fire", "flood", "evacuate", "storm"]}
    texts = [f"{words[i % 2][i % 4]} {words[i % 2][(i + 1) % 4]} day {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    result = benchmark_baseline(texts[:30], labels[:30], texts[30:], labels[30:], threads=1,
                                batch_sizes=[1, 4], seq_len=16, warmup=1, repeats=3)
    assert result["kind"] == result["name"] == BASELINE_NAME
    assert result["accuracy"] == 1.0 and result["n"] == 10
    assert set(result["latency"]) == {"1", "4"} and result["latency"]["4"]["p50_ms"] > 0
    assert result["size_bytes"] > 0 and result["params"] > 2
