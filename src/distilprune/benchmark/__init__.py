"""Benchmark classifiers on CPU (latency, throughput, RSS, size, accuracy) and report them.

Importing this package does not import torch; PyTorch is loaded only for PyTorch models.
"""

from distilprune.benchmark.speed import (
    OnnxRunner,
    Runner,
    TorchRunner,
    accuracy,
    benchmark_models,
    benchmark_one,
    load_runner,
    measure,
    run_benchmark,
)
from distilprune.reporting.benchmark import add_ratios, benchmark_table, write_report

__all__ = [
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "accuracy",
    "add_ratios",
    "benchmark_table",
    "benchmark_models",
    "benchmark_one",
    "load_runner",
    "measure",
    "run_benchmark",
    "write_report",
]
