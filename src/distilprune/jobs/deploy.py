"""The ``export`` and ``benchmark`` jobs (a model made ready to deploy): a saved model to ONNX
(parity-checked, optionally int8), compact storage, the sparse engine's format or DeepSparse's
ONNX; models timed side by side. The commands and the stage-graph kinds of the same names run these."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distilprune.errors import UserError, require, require_at_least

FORMATS = ("onnx", "compact", "sparse", "deepsparse")


@dataclasses.dataclass
class ExportConfig:
    """``distilprune export``: ``model`` -> ``out`` in ``format``."""

    model: str = ""
    out: str = ""
    format: str = "onnx"  # onnx | compact | sparse | deepsparse
    int8: bool = False
    quantization: str | None = None  # dynamic | qat-static (ONNX; implies int8)
    data: str | None = None  # texts for the parity check (default built-in)
    limit: int = 500
    max_length: int = 128
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(self.format in FORMATS, f"unknown export format {self.format!r}: use onnx, compact, "
                                        "sparse or deepsparse")


@dataclasses.dataclass
class BenchmarkConfig:
    """``distilprune benchmark``: ``models`` (the first is the baseline) timed into ``out``."""

    models: list[str] = dataclasses.field(default_factory=list)
    out: str = ""
    data: str | None = None  # labelled data for accuracy (and the texts)
    limit: int | None = 500
    threads: int = 1
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 8])
    max_length: int = 128
    repeats: int = 20
    warmup: int = 3


@dataclasses.dataclass
class QuantizeConfig:
    """``distilprune quantize``: static int8 of the fp32 ONNX export ``model``, activations calibrated
    on the first ``limit`` texts of ``data``; parity against ``model`` on ``parity_data`` (default:
    the calibration texts)."""

    model: str = ""
    out: str = ""
    data: str = ""
    limit: int = 200
    parity_data: str | None = None
    parity_limit: int = 500
    max_length: int = 128
    overwrite: bool = False


def local(model: str | Path) -> Path:
    """A packaged alias (``minilm-l6``) as its installed directory; any other path unchanged."""
    from distilprune.models.registry import ALIASES, resolve_model

    return Path(resolve_model(str(model))) if str(model) in ALIASES else Path(model)


def split_suffix(spec: str) -> tuple[str, str]:
    """``DIR@int8`` -> ``("DIR", "@int8")``; ``DIR`` -> ``("DIR", "")``."""
    name, at, kind = spec.rpartition("@")
    return (name, at + kind) if at else (spec, "")


def texts_for(model_dir: Path, data: str | Path | None, limit: int | None, text_column: str | None = None,
              pairs: bool = False) -> tuple[list | None, list[int] | None]:
    """Texts (preprocessed as ``model_dir`` was trained) and labels of ``data``, if given; with
    ``pairs``, a pair classifier's or QA model's inputs as ``(text, second text)`` tuples. NER and
    QA data give no labels (their scores come from ``evaluate``)."""
    require_at_least("--limit", limit, 1)
    if data is None:
        return None, None
    from distilprune.data.loading import load_table
    from distilprune.jobs.common import label_names_of, preprocess_table, read_metadata
    from distilprune.task import require_data_for, task_of_model

    base = model_dir.parent if model_dir.suffix == ".onnx" else model_dir
    task = task_of_model(base) if base.is_dir() else "classification"
    require_data_for(model_dir, task, data)
    if task != "classification":
        from distilprune.jobs.tasks import task_texts

        return task_texts(task, data, limit, pairs), None
    meta = read_metadata(base) if base.is_dir() else {}
    names = label_names_of(base) if (base / "config.json").is_file() else None
    table = load_table(data, text_column, require_labels=False, num_labels=None, label_names=names,
                       pairs=bool(meta.get("text_pairs")))
    if limit:
        table = table.subset(list(range(min(limit, len(table)))))
    table = preprocess_table(table, meta.get("preprocess", []))
    if pairs and table.pairs is not None:
        return list(zip(table.texts, table.pairs, strict=True)), table.labels
    return table.texts, table.labels


def copy_metadata(model: Path, out: Path) -> None:
    """Keep the training metadata (preprocessing, labels) next to an export."""
    from distilprune.io import write_json
    from distilprune.jobs.common import METADATA_FILE, read_metadata

    if (model / METADATA_FILE).is_file():
        write_json(out / METADATA_FILE, read_metadata(model))


def _parity_line(parity: dict[str, Any]) -> str:
    return (f"parity on {parity['n_texts']} texts: max |Δlogit| {parity['max_abs_diff']:.2e}, "
            f"agreement {parity['agreement']:.4f}")


def export_model(cfg: ExportConfig) -> dict[str, Any]:
    """Run the export; returns its report with a one-line ``message`` for the console."""
    from distilprune.io import check_writable
    from distilprune.task import task_of_model

    model, out = local(cfg.model), Path(cfg.out)
    check_writable(out)
    if cfg.quantization is not None and cfg.format != "onnx":
        raise UserError(f"--quantization applies to --format onnx, not {cfg.format}")
    if cfg.format == "deepsparse" and (task := task_of_model(model)) != "classification":
        raise UserError(f"{model} is a {task} model: it exports to --format onnx, compact or sparse "
                        "(the deepsparse format holds classifiers)")
    return {"onnx": _onnx, "compact": _compact, "sparse": _sparse, "deepsparse": _deepsparse}[cfg.format](
        cfg, model, out)


def _onnx(cfg: ExportConfig, model: Path, out: Path) -> dict[str, Any]:
    from distilprune.export import export_onnx

    texts, _ = texts_for(model, cfg.data, cfg.limit, pairs=True)
    int8 = cfg.int8 or cfg.quantization is not None
    result = export_onnx(model, out, int8=int8, max_length=cfg.max_length, parity_texts=texts,
                         overwrite=cfg.overwrite, quantization=cfg.quantization or "dynamic")
    copy_metadata(model, out)
    method = f" int8 ({result['quantization']['method']})" if int8 else ""
    return {**result, "message": f"ONNX{method} -> {out}: {_parity_line(result['parity'])}"}


def _compact(cfg: ExportConfig, model: Path, out: Path) -> dict[str, Any]:
    from distilprune.export.storage import save_compact

    report = save_compact(model, out, int8=cfg.int8, overwrite=cfg.overwrite)
    sizes = f"{report['compact_bytes'] / 1e6:.1f} MB vs dense {report['dense_bytes'] / 1e6:.1f} MB"
    return {**report, "message": f"compact: {sizes} ({report['ratio']:.1f}x smaller) -> {out}"}


def _sparse(cfg: ExportConfig, model: Path, out: Path) -> dict[str, Any]:
    from distilprune.export.sparse import export_sparse

    texts, _ = texts_for(model, cfg.data, cfg.limit, pairs=True)
    result = export_sparse(model, out, parity_texts=texts, max_length=cfg.max_length,
                           overwrite=cfg.overwrite)
    return {**result, "message": f"sparse engine -> {out}: {result['size_bytes'] / 1e6:.1f} MB, block "
                                 f"density {result['block_density']:.3f}; {_parity_line(result['parity'])}"}


def _deepsparse(cfg: ExportConfig, model: Path, out: Path) -> dict[str, Any]:
    from distilprune.engine.deepsparse import export_for_deepsparse

    export_for_deepsparse(model, out, seq_len=cfg.max_length, overwrite=cfg.overwrite)
    copy_metadata(model, out)
    return {"message": f"DeepSparse fp32 ONNX (seq {cfg.max_length}) -> {out}"}


def quantize_model(cfg: QuantizeConfig) -> dict[str, Any]:
    """Run the static quantization; returns its parity with a one-line ``message``."""
    from distilprune.export.onnx import static_quantize_export
    from distilprune.jobs.common import check_output_dir

    model, out = Path(cfg.model), check_output_dir(cfg.out, cfg.overwrite)
    if not (model / "model.onnx").is_file():
        raise UserError(f"{model} is not an ONNX export (no model.onnx): run `distilprune export` first")
    require(bool(cfg.data), "quantize: calibration texts (--data) are required")
    texts, _ = texts_for(model, cfg.data, cfg.limit)
    parity_texts = texts_for(model, cfg.parity_data, cfg.parity_limit)[0] if cfg.parity_data else None
    parity = static_quantize_export(model, out, texts, parity_texts=parity_texts, max_length=cfg.max_length,
                                    overwrite=cfg.overwrite)
    size = (out / "model.onnx").stat().st_size / 1e6
    return {"parity": parity, "message": f"static int8: {size:.1f} MB -> {out}; vs fp32 ONNX on "
                                         f"{parity['n_texts']} texts: max |Δlogit| "
                                         f"{parity['max_abs_diff']:.3g}, agreement {parity['agreement']:.3f}"}


def benchmark_models(cfg: BenchmarkConfig, prefix: Path | None = None) -> dict[str, Any]:
    """Time ``cfg.models`` side by side into ``prefix`` (default ``<out>/benchmark``)
    ``.json/.md/.png``; every model is checked (suffix, files, tokenizer) before the first runs."""
    from distilprune.benchmark import run_benchmark
    from distilprune.benchmark.speed import SPEC_SUFFIXES
    from distilprune.export.runtime import require_tokenizer_files
    from distilprune.io import check_writable

    require(bool(cfg.models), "benchmark: no models given")
    for option, value, low in (("--threads", cfg.threads, 1), ("--repeats", cfg.repeats, 1),
                               ("--warmup", cfg.warmup, 0), ("--max-length", cfg.max_length, 2)):
        require_at_least(option, value, low)
    require(bool(cfg.batch_sizes) and all(b > 0 for b in cfg.batch_sizes),
            f"batch sizes must be positive integers, got {cfg.batch_sizes}")
    prefix = prefix or Path(cfg.out) / "benchmark"
    check_writable(prefix.with_name(f"{prefix.name}.json"))
    models = []
    for spec in cfg.models:  # every model checked before the first one's subprocess starts
        name, suffix = split_suffix(spec)
        if suffix and suffix not in SPEC_SUFFIXES:
            raise UserError(f"unknown suffix {suffix} in {spec}: use DIR@int8 or DIR@sparse")
        path = local(name)
        if not path.exists():
            raise UserError(f"model not found: {path}")
        if (folder := path.parent if path.suffix == ".onnx" else path).is_dir():
            require_tokenizer_files(folder)
        models.append(str(path) + suffix)
    texts, labels = texts_for(Path(split_suffix(models[0])[0]), cfg.data, cfg.limit, pairs=True)
    return run_benchmark(models, texts, labels, prefix, cfg.threads, cfg.batch_sizes, cfg.max_length,
                         cfg.repeats, cfg.warmup)
