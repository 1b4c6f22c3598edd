"""Benchmark classifiers on CPU (latency, throughput, RSS, size, accuracy) and report them.

Importing this package does not import torch; PyTorch is loaded only for PyTorch models.
"""

from distilprune.benchmark.report import add_ratios, markdown_table, write_report
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

__all__ = [
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "accuracy",
    "add_ratios",
    "benchmark_models",
    "benchmark_one",
    "load_runner",
    "markdown_table",
    "measure",
    "run_benchmark",
    "write_report",
]
