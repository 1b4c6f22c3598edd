"""CPU latency, throughput, memory, size and accuracy of classifiers (PyTorch dirs or ONNX exports).

Each model of :func:`benchmark_models` runs in a fresh ``python -m distilprune.benchmark``
process so its peak RSS (``ru_maxrss``) is its own. Latency is model time only: inputs are
tokenized beforehand, padded/truncated to exactly ``seq_len`` tokens so all models see one shape.
This module does not import torch unless a PyTorch model is benchmarked.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from distilprune.engine.timing import Runner, measure, measure_dynamic, peak_rss_mb
from distilprune.errors import UserError, require
from distilprune.export.runtime import (
    SAMPLE_TEXTS,
    OnnxClassifier,
    max_sequence_length,
    read_export_metadata,
    weights_size,
)
from distilprune.io import read_json, write_json
from distilprune.task import split_pairs

# ``DIR@int8``: PyTorch dynamic int8; ``DIR@sparse``: the sparse int8 engine (packed at load).
SPEC_SUFFIXES = {"@int8": "torch-int8", "@sparse": "sparse"}


class OnnxRunner:
    """ONNX Runtime runner around :class:`~distilprune.export.runtime.OnnxClassifier`."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.classifier = OnnxClassifier(path, threads=threads)
        self.path = Path(path)
        self.max_length = self.classifier.max_length
        self.kind = "onnx-int8" if read_export_metadata(self.classifier.folder).get("int8") else "onnx"
        self.positions = max_sequence_length(self.classifier.config)

    def set_threads(self, threads: int) -> None:
        self.classifier.set_threads(threads)

    def encode(self, texts: Sequence[Any], pad_to: int | None = None) -> dict[str, np.ndarray]:
        first, pairs = split_pairs(texts)
        return self.classifier.encode(first, pad_to, pairs)

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.classifier.run(batch)

    def predict_logits(self, texts: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        first, pairs = split_pairs(texts)
        return self.classifier.predict_logits(first, batch_size, pairs)

    def info(self) -> dict[str, Any]:
        """Size on disk and number of weight elements (initializers) of the ONNX graph."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.classifier.onnx_path))
        params = sum(numpy_helper.to_array(t).size for t in model.graph.initializer)
        return {"size_bytes": weights_size(self.classifier.onnx_path), "params": int(params),
                "nonzero_params": None}


class TorchRunner:
    """PyTorch runner for a model directory: fp32, dynamic int8 Linears or the sparse engine."""

    def __init__(self, path: str | Path, threads: int | None = None, int8: bool = False,
                 max_length: int = 128, engine: str = "auto") -> None:
        import torch

        from distilprune.engine.sparse import retain_freed_memory
        from distilprune.export.source import load_model_and_tokenizer
        from distilprune.formats import is_sparse_dir
        from distilprune.models.base import count_parameters

        self.torch, self.path, self.max_length = torch, Path(path), max_length
        if threads:
            torch.set_num_threads(threads)
        retain_freed_memory()  # every PyTorch row gets the sparse engine's allocator setting
        model, self.tokenizer = load_model_and_tokenizer(path, engine)
        self.packed_dir = is_sparse_dir(path)  # written by export --format sparse
        self.sparse = engine == "sparse" or self.packed_dir
        self.positions = max_sequence_length(model.config.to_dict())
        accepted = set(self.tokenizer.model_input_names)
        self.names = [n for n in ("input_ids", "token_type_ids", "attention_mask")
                      if n in accepted and n in _forward_args(model)]
        self._info = {"params": count_parameters(model),
                      "nonzero_params": count_parameters(model, nonzero=True)}
        if self.sparse:
            self._info = _sparse_counts(model, self._info)
        self.kind = "sparse" if self.sparse else "torch-int8" if int8 else "torch"
        self.model = _quantize_dynamic(model) if int8 else model

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def encode(self, texts: Sequence[Any], pad_to: int | None = None) -> dict[str, Any]:
        first, pairs = split_pairs(texts)
        enc = self.tokenizer(first, pairs, padding="max_length" if pad_to else True,
                             truncation=True, max_length=pad_to or self.max_length,
                             return_tensors="pt")
        return {n: enc[n] for n in self.names}

    def run(self, batch: dict[str, Any]) -> np.ndarray:
        """The logits (a QA model: its start logits)."""
        with self.torch.inference_mode():
            out = self.model(**batch)
        return (out.logits if getattr(out, "logits", None) is not None else out.start_logits).float().numpy()

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        texts = list(texts)
        return np.concatenate([self.run(self.encode(texts[i:i + batch_size]))
                               for i in range(0, len(texts), batch_size)])

    def info(self) -> dict[str, Any]:
        """Weights on disk (fp32, sparse dir), packed size (``@sparse``) or state dict (int8)."""
        if self.kind == "torch" or self.packed_dir:
            return {**self._info, "size_bytes": weights_size(self.path)}
        if self.sparse:
            return {**self._info, "size_bytes": _sparse_size(self.model)}
        buffer = io.BytesIO()
        self.torch.save(self.model.state_dict(), buffer)
        return {**self._info, "size_bytes": buffer.tell()}


def _forward_args(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _quantize_dynamic(model: Any) -> Any:
    """PyTorch dynamic int8 (per-tensor weights, as ``torch.ao``'s default), in place."""
    from distilprune.quantize import dynamic_quantize

    return dynamic_quantize(model, per_channel=False, inplace=True)


def _sparse_counts(model: Any, counts: dict[str, int]) -> dict[str, int]:
    """Add the weights packed in SparseLinear buffers to the parameter counts."""
    import torch

    from distilprune.engine.sparse import SparseLinear

    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    return {"params": counts["params"] + sum(m.in_features * m.out_features for m in layers),
            "nonzero_params": counts["nonzero_params"]
            + sum(int(m.vals.view(torch.int8).ne(0).sum()) for m in layers)}


def _sparse_size(model: Any) -> int:
    """Bytes of the sparse-engine weights file the packed model would be saved as."""
    from distilprune.engine.sparse import save_sparse_weights

    with tempfile.TemporaryDirectory() as tmp:
        return save_sparse_weights(model, Path(tmp))["size_bytes"]


def parse_model_spec(spec: str) -> tuple[Path, str | None]:
    """``DIR``, ``DIR@int8`` (PyTorch dynamic int8) or ``DIR@sparse`` -> ``(path, suffix kind)``."""
    for suffix, kind in SPEC_SUFFIXES.items():
        if spec.endswith(suffix):
            return Path(spec[: -len(suffix)]), kind
    return Path(spec), None


def load_runner(path: str | Path, threads: int | None = 2, *, torch_int8: bool = False,
                max_length: int = 128) -> Runner:
    """Pick a runner by content: export dir / .onnx file -> ONNX, dir with config.json -> torch.

    ``path`` may carry the ``@int8`` (PyTorch dynamic int8) or ``@sparse`` (sparse int8 engine)
    suffix.
    """
    from distilprune.engine.deepsparse import DeepSparseRunner
    from distilprune.formats import model_kind

    path, kind = parse_model_spec(str(path))
    torch_int8 = torch_int8 or kind == "torch-int8"
    fmt = model_kind(path)
    if fmt not in ("onnx", "deepsparse"):
        require(path.is_dir(), f"model not found: {path}")
        require((path / "config.json").is_file(), f"{path} holds neither model.onnx nor config.json")
    if fmt == "deepsparse":
        require(kind is None and not torch_int8, f"{path} is a DeepSparse export: no @ suffix")
        return DeepSparseRunner(path, threads)
    if fmt == "onnx":
        require(kind is None and not torch_int8,
                f"{path}: @int8/@sparse apply to PyTorch models; export with --int8")
        return OnnxRunner(path, threads)
    engine = "sparse" if kind == "sparse" else "auto"
    return TorchRunner(path, threads, int8=torch_int8, max_length=max_length, engine=engine)


def accuracy(runner: Runner, texts: Sequence[str], labels: Sequence[int],
             batch_size: int = 32) -> dict[str, float]:
    """Accuracy and F1 (binary: positive class 1; otherwise macro) on a labelled set.

    numpy only: the child process may run in the DeepSparse venv, which has no scikit-learn.
    """
    require(len(texts) == len(labels) and len(texts) > 0,
            f"need as many labels as texts (got {len(texts)} texts, {len(labels)} labels)")
    preds = runner.predict_logits(texts, batch_size).argmax(axis=-1)
    truth = np.asarray(labels)
    classes = sorted(set(truth.tolist()) | set(preds.tolist()))
    scores = [_f1(truth == c, preds == c) for c in classes]
    f1 = scores[classes.index(1)] if set(classes) <= {0, 1} and 1 in classes else float(np.mean(scores))
    return {"accuracy": float((preds == truth).mean()), "f1": f1, "n": len(texts)}


def _f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of one class from boolean membership arrays (0 when it is never predicted nor true)."""
    hits = float((truth & predicted).sum())
    denominator = float(truth.sum() + predicted.sum())
    return 2 * hits / denominator if denominator else 0.0


def benchmark_one(spec: str, texts: Sequence[str], labels: Sequence[int] | None = None, *,
                  threads: int = 2, batch_sizes: Sequence[int] = (1, 8), seq_len: int = 128,
                  warmup: int = 3, repeats: int = 20, dynamic: bool = False) -> dict[str, Any]:
    """Load, time and (optionally) score one model in this process (call in a fresh one)."""
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    runner = load_runner(spec, threads, max_length=seq_len)
    load_s = time.perf_counter() - start
    result = measure(runner, texts, batch_sizes=batch_sizes, seq_len=seq_len, warmup=warmup,
                     repeats=repeats, threads=threads)
    if dynamic:
        result["latency_dynamic"] = measure_dynamic(runner, texts, batch_sizes=batch_sizes, warmup=warmup)
    result.update(peak_rss_mb=peak_rss_mb(), load_s=load_s, spec=spec, load_avg_1m=load_avg,
                  path=str(parse_model_spec(spec)[0]))
    result.update(runner.info())  # after RSS: reading the ONNX graph is not serving memory
    result["size_mb"] = result["size_bytes"] / 1e6
    if labels is not None:
        result.update(accuracy(runner, texts, labels))
    return result


def benchmark_models(paths: Sequence[str], texts: Sequence[str] | None = None,
                     labels: Sequence[int] | None = None, *, threads: int = 2,
                     batch_sizes: Sequence[int] = (1, 8), seq_len: int = 128, warmup: int = 3,
                     repeats: int = 20, timeout: float | None = None, dynamic: bool = False
                     ) -> list[dict[str, Any]]:
    """Benchmark each model spec sequentially, each in its own subprocess."""
    require(len(paths) > 0, "give at least one model to benchmark")
    texts = list(texts or SAMPLE_TEXTS)
    names = model_names(paths)
    results = []
    with tempfile.TemporaryDirectory(prefix="distilprune-bench-") as tmp:
        data = Path(tmp) / "data.json"
        write_json(data, {"texts": texts, "labels": None if labels is None else list(labels)})
        progress = tqdm(list(zip(paths, names, strict=True)), desc="benchmark", unit="model")
        for spec, name in progress:
            progress.set_postfix_str(name)
            _check_spec(spec)
            settings = {"threads": threads, "batch_sizes": list(batch_sizes), "seq_len": seq_len,
                        "warmup": warmup, "repeats": repeats, "dynamic": dynamic}
            result = _run_child(spec, data, Path(tmp) / "result.json", settings, timeout)
            results.append({"name": name, **result})
    return results


def _check_spec(spec: str) -> None:
    path, _ = parse_model_spec(spec)
    require(path.exists(), f"model not found: {path}")


def _run_child(spec: str, data: Path, out: Path, settings: dict[str, Any],
               timeout: float | None) -> dict[str, Any]:
    cmd = [_child_python(spec), "-m", "distilprune.benchmark", "--model", spec, "--data", str(data),
           "--json", str(out), "--settings", json.dumps(settings)]
    threads = str(settings["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"benchmark of {spec} timed out after {timeout} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise UserError(f"benchmark of {spec} failed: {lines[-1] if lines else proc.returncode}")
    return read_json(out)


def _child_python(spec: str) -> str:
    """The interpreter that measures ``spec``: DeepSparse exports run in its own venv."""
    from distilprune.engine.deepsparse import deepsparse_python, require_deepsparse
    from distilprune.formats import is_deepsparse_export

    if not is_deepsparse_export(parse_model_spec(spec)[0]):
        return sys.executable
    require_deepsparse()
    return str(deepsparse_python() or sys.executable)


def model_names(paths: Sequence[str]) -> list[str]:
    """Short unique display names: folder name (or parent/name when ambiguous) + @int8."""
    def short(spec: str, depth: int) -> str:
        path, kind = parse_model_spec(spec)
        suffix = spec[len(str(path)):] if kind else ""
        path = path.resolve()
        depth += path.suffix == ".onnx"  # a bare model.onnx is named after its folder too
        return "/".join(path.parts[-depth:]) + suffix

    names = [short(p, 1) for p in paths]
    for depth in (2, 3):
        if len(set(names)) == len(names):
            break
        names = [short(p, depth) if names.count(n) > 1 else n
                 for p, n in zip(paths, names, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def run_benchmark(model_paths: list[str], data_texts: Sequence[str] | None,
                  data_labels: Sequence[int] | None, out_prefix: str | Path, threads: int = 2,
                  batch_sizes: Sequence[int] = (1, 8), seq_len: int = 128, repeats: int = 20,
                  warmup: int = 3) -> dict[str, Any]:
    """Benchmark models (the first is the baseline) and write ``<prefix>.json/.md/.png``."""
    from distilprune.reporting.benchmark import write_report

    results = benchmark_models(model_paths, data_texts, data_labels, threads=threads,
                               batch_sizes=batch_sizes, seq_len=seq_len, warmup=warmup,
                               repeats=repeats)
    prefix = Path(out_prefix)
    files = {ext: prefix.with_name(prefix.name + f".{ext}") for ext in ("json", "md", "png")}
    report = write_report(results, files["json"], files["md"], files["png"])
    return {**report, "files": {k: str(v) for k, v in files.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry point: benchmark one model and write its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m distilprune.benchmark")
    parser.add_argument("--model", required=True, help="model dir, export dir, .onnx, DIR@int8")
    parser.add_argument("--data", required=True, help='JSON file {"texts": [...], "labels": ...}')
    parser.add_argument("--json", required=True, help="where to write the result")
    parser.add_argument("--settings", default="{}", help="JSON keyword arguments of measure()")
    args = parser.parse_args(argv)
    try:
        data = read_json(args.data)
        with warnings.catch_warnings():  # library chatter must not reach the parent's table
            warnings.simplefilter("ignore")
            result = benchmark_one(args.model, data["texts"], data.get("labels"),
                                   **json.loads(args.settings))
        write_json(args.json, result)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "accuracy",
    "benchmark_models",
    "benchmark_one",
    "load_runner",
    "measure",
    "model_names",
    "run_benchmark",
]
