"""The :class:`Runner` protocol of the inference engines, and how fast one runs: latency
percentiles, throughput and the process's peak memory.

numpy only: :mod:`distilprune.benchmark` and ``python -m distilprune.engine.deepsparse bench``
(run in the DeepSparse venv) time runners the same way.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from distilprune.errors import require
from distilprune.export.runtime import SAMPLE_TEXTS


class Runner(Protocol):
    """Anything that maps a batch of texts to logits."""

    kind: str
    path: Path
    max_length: int

    def set_threads(self, threads: int) -> None: ...
    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> Any: ...
    def run(self, batch: Any) -> np.ndarray: ...
    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...
    def info(self) -> dict[str, Any]: ...


def _batch_texts(texts: Sequence[str], size: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(size)]


def _latency(runner: Runner, batch: Any, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        runner.run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure(runner: Runner, texts: Sequence[str], *, batch_sizes: Sequence[int] = (1, 8),
            seq_len: int = 128, warmup: int = 3, repeats: int = 20,
            threads: int = 2) -> dict[str, Any]:
    """Latency percentiles (ms) and throughput (sequences/s) per batch size at ``seq_len``."""
    texts = list(texts) or list(SAMPLE_TEXTS)
    require(repeats > 0 and warmup >= 0, "repeats must be positive and warmup non-negative")
    require(batch_sizes and all(b > 0 for b in batch_sizes), "batch sizes must be positive")
    limit = getattr(runner, "positions", None)
    require(seq_len > 1 and (limit is None or seq_len <= limit),
            f"sequence length must be between 2 and {limit} for {runner.path}, got {seq_len}")
    runner.set_threads(threads)
    latency = {}
    for size in batch_sizes:
        batch = runner.encode(_batch_texts(texts, size), pad_to=seq_len)
        times = _latency(runner, batch, warmup, repeats)
        mean = statistics.fmean(times)
        latency[str(size)] = {
            "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": mean,
            "min_ms": min(times),
            "throughput": size * 1000.0 / mean,
        }
    return {
        "kind": runner.kind,
        "seq_len": seq_len,
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "latency": latency,
        "throughput": max(v["throughput"] for v in latency.values()),
    }


def measure_dynamic(runner: Runner, texts: Sequence[str], *, batch_sizes: Sequence[int] = (1, 8),
                    max_batches: int = 64, warmup: int = 3) -> dict[str, Any]:
    """Latency at the texts' real lengths: consecutive batches padded to their longest text.

    Engines with static shapes (DeepSparse) pad every batch to their fixed length anyway.
    """
    texts = list(texts) or list(SAMPLE_TEXTS)
    latency = {}
    for size in batch_sizes:
        batches = [runner.encode(_batch_texts(texts[i:] + texts[:i], size))
                   for i in range(0, min(len(texts), size * max_batches), size)]
        for batch in batches[:warmup]:
            runner.run(batch)
        times = []
        for batch in batches:
            start = time.perf_counter()
            runner.run(batch)
            times.append((time.perf_counter() - start) * 1000.0)
        mean = statistics.fmean(times)
        latency[str(size)] = {"p50_ms": float(np.percentile(times, 50)),
                              "p95_ms": float(np.percentile(times, 95)), "mean_ms": mean,
                              "throughput": size * 1000.0 / mean, "batches": len(times)}
    return latency


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    Linux: ``VmHWM`` of the current address space. ``ru_maxrss`` is not used there because a
    child started with vfork/exec inherits its parent's peak, which would hide the model's own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20
