"""One recipe, one command: the whole Prune-OFA pipeline, resumable stage by stage.

teacher fine-tune -> (MLM head fit, when the teacher has none) -> student init -> pruned
general distillation (Prune OFA) -> mask-locked fine-tune (optionally task-distilled) -> QAT
int8 (mask locked) -> ONNX int8 + compact export -> benchmark -> report.

Every stage writes ``<out>/<stage>/`` atomically; :mod:`distilprune.jobs.staging` then records
the hash of the recipe parts it depends on (its own section, data/corpus file digests and the
upstream stages' hashes) plus the run ids of the upstream outputs it consumed. A stage is skipped
when its record matches: a rerun continues where it stopped, and a changed section re-runs that
stage and everything downstream.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilprune.config import load_run_recipe, to_dict
from distilprune.errors import require, require_at_least
from distilprune.io import atomic_dir, locked_dir
from distilprune.jobs.common import METADATA_FILE, DataConfig, data_digests, prepare_data
from distilprune.jobs.distill import CorpusConfig, DistillLoss, TaskLoss
from distilprune.jobs.staging import Stage, file_digests, run_stages, select_stages
from distilprune.prune import PruneConfig
from distilprune.quantize import QATConfig
from distilprune.train import TrainConfig

log = logging.getLogger("distilprune.pipeline")

STAGES = ("teacher", "mlm_head", "student", "distill", "finetune", "qat", "export", "benchmark",
          "report")
# "baseline": TF-IDF + logistic regression fitted on the training split (no model directory)
BENCHMARK_MODELS = ("teacher", "student", "compressed", "baseline")


# ----------------------------------------------------------------------------- recipe
@dataclass
class TeacherSection:
    """The teacher: a pretrained encoder (alias/dir) fine-tuned on ``data``."""

    model: str = ""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=4e-5, patience=None))


@dataclass
class StudentSection:
    """Student depth: ``layers`` (every other teacher layer) or an explicit ``layer_map``."""

    layers: int | None = None
    layer_map: list[int] | None = None

    def __post_init__(self) -> None:
        require_at_least("student.layers", self.layers, 1)


@dataclass
class MLMHeadSection:
    """Fitting an MLM head on the frozen teacher (``enabled: null`` = only when it has none)."""

    enabled: bool | None = None
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_budget("mlm_head", self.steps, self.lr, self.batch_size)


def check_budget(section: str, steps: int, lr: float, batch_size: int | None = None) -> None:
    """A section's own short training budget: steps and batch size >= 1, lr > 0."""
    require_at_least(f"{section}.steps", steps, 1)
    require_at_least(f"{section}.lr", lr, 0, strict=True)
    require_at_least(f"{section}.batch_size", batch_size, 1)


@dataclass
class DistillSection:
    """Pruned general distillation (Prune OFA) on an unlabelled ``corpus``."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    loss: DistillLoss = field(default_factory=DistillLoss)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=1e-4, patience=None))
    prune: PruneConfig | None = field(default_factory=PruneConfig)


@dataclass
class FinetuneSection:
    """Mask-locked fine-tuning of the sparse student (task-distilled from the teacher)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    task_distillation: bool = True
    loss: TaskLoss = field(default_factory=TaskLoss)


@dataclass
class QATSection(QATConfig):
    """Int8 QAT (mask locked): ``steps``/``lr`` override ``finetune.train`` for a short run."""

    enabled: bool = True
    steps: int = 100
    lr: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_budget("qat", self.steps, self.lr)

    def quant_config(self) -> QATConfig:
        """The plain :class:`QATConfig` part of this section."""
        return QATConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(QATConfig)})


@dataclass
class ExportSection:
    """ONNX export (int8: ONNX Runtime dynamic) and the compact sparse(+int8) safetensors."""

    int8: bool = True
    max_length: int | None = None
    compact: bool = True
    parity_texts: int = 200

    def __post_init__(self) -> None:
        require_at_least("export.max_length", self.max_length, 2)
        require_at_least("export.parity_texts", self.parity_texts, 1)


@dataclass
class BenchmarkSection:
    """CPU benchmark on the validation split; ``models`` among teacher, student, compressed."""

    models: list[str] = field(default_factory=lambda: ["teacher", "compressed"])
    threads: int = 1
    repeats: int = 20
    warmup: int = 3
    limit: int | None = 500
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    seq_len: int | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.models if m not in BENCHMARK_MODELS]
        require(not bad and bool(self.models),
                f"benchmark.models must be among {', '.join(BENCHMARK_MODELS)}, got {self.models}")
        require(bool(self.batch_sizes) and min(self.batch_sizes) >= 1,
                f"benchmark.batch_sizes must be positive integers, got {self.batch_sizes}")
        for name, low in (("threads", 1), ("repeats", 1), ("warmup", 0), ("limit", 1), ("seq_len", 2)):
            require_at_least(f"benchmark.{name}", getattr(self, name), low)


@dataclass
class PipelineConfig:
    """A whole-pipeline recipe (``distilprune run RECIPE.yaml``)."""

    out: str = ""
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    mlm_head: MLMHeadSection = field(default_factory=MLMHeadSection)
    distill: DistillSection = field(default_factory=DistillSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    qat: QATSection = field(default_factory=QATSection)
    export: ExportSection = field(default_factory=ExportSection)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)

    def validate(self) -> None:
        """Raise :class:`UserError` when a required recipe key is missing or ``threads`` < 1."""
        require_at_least("threads", self.threads, 1)
        require(bool(self.out), "recipe: 'out' (the output root directory) is required")
        require(bool(self.teacher.model), "recipe: 'teacher.model' is required")
        require(bool(self.data.train), "recipe: 'data.train' is required")


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline recipe; ``out`` defaults to ``runs/<recipe name>``."""
    cfg = load_run_recipe(path, PipelineConfig, overrides)
    cfg.validate()
    return cfg


def preflight(cfg: PipelineConfig) -> None:
    """Check the teacher model, the student's depth and the labelled data before any stage runs: a
    bad input fails now in one line, not after the stages before the one that reads it."""
    from distilprune.export.runtime import require_tokenizer_files
    from distilprune.models.loading import check_max_length, load_config
    from distilprune.models.registry import resolve_model
    from distilprune.models.student import default_layer_map, validate_layer_map

    if Path(path := resolve_model(cfg.teacher.model)).is_dir():
        require_tokenizer_files(path)
    for max_length in (cfg.data.max_length, cfg.distill.corpus.max_length):
        check_max_length(cfg.teacher.model, max_length)
    layers = load_config(cfg.teacher.model).num_hidden_layers
    if cfg.student.layer_map:
        validate_layer_map(cfg.student.layer_map, layers)
    else:
        default_layer_map(layers, cfg.student.layers)
    if (task := cfg.data.kind) == "classification":
        prepare_data(cfg.data)
        return
    from distilprune.jobs.tasks import read_rows

    require("baseline" not in cfg.benchmark.models,
            f"benchmark.models: the baseline is a classifier, not {task}")
    for path in filter(None, (cfg.data.train, cfg.data.validation)):
        read_rows(task, path)


# ----------------------------------------------------------------------------- hashing
def _data_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    return {"data": to_dict(cfg.data), "files": data_digests(cfg.data)}


def _corpus_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    from distilprune.data.corpus import default_corpus_files
    from distilprune.models.registry import cache_dir

    files = cfg.distill.corpus.files or default_corpus_files(cache_dir() / "data")
    return {"corpus": to_dict(cfg.distill.corpus), "files": file_digests(files, "corpus file")}


def upstream_of(cfg: PipelineConfig, stage: str) -> tuple[str, ...]:
    """The stages whose outputs ``stage`` consumes."""
    kd = ("teacher",) if cfg.finetune.task_distillation else ()
    return {
        "teacher": (), "mlm_head": (), "student": ("mlm_head",),
        "distill": ("mlm_head", "student"), "finetune": ("distill", *kd),
        "qat": ("finetune", *kd), "export": ("finetune", "qat"),
        "benchmark": ("teacher", "finetune", "qat", "export"), "report": STAGES[:-1],
    }[stage]


def stage_inputs(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The recipe parts (and file digests) ``stage`` depends on, besides its upstream stages."""
    if stage == "teacher":
        return {"teacher": to_dict(cfg.teacher), **_data_inputs(cfg)}
    if stage == "mlm_head":
        if cfg.mlm_head.enabled is False:
            return {"enabled": False}
        return {"model": cfg.teacher.model, "mlm_head": to_dict(cfg.mlm_head), **_corpus_inputs(cfg)}
    if stage == "qat" and not cfg.qat.enabled:
        return {"enabled": False}
    if stage == "distill":
        return {"distill": to_dict(cfg.distill), **_corpus_inputs(cfg)}
    if stage in ("finetune", "qat"):
        section = {"finetune": to_dict(cfg.finetune), "qat": to_dict(cfg.qat) if stage == "qat" else None}
        return {**section, **_data_inputs(cfg)}
    if stage == "export":
        return {"export": to_dict(cfg.export), "max_length": cfg.data.max_length, **_data_inputs(cfg)}
    if stage == "benchmark":
        return {"benchmark": to_dict(cfg.benchmark), **_data_inputs(cfg)}
    if stage == "report":
        return {"recipe": to_dict(cfg)}
    return {stage: to_dict(getattr(cfg, stage))}


def plan_stages(cfg: PipelineConfig) -> dict[str, Stage]:
    """Every stage with its inputs: its recipe parts chained with its upstream stages' hashes."""
    made: dict[str, Stage] = {}
    for name in STAGES:
        upstream = upstream_of(cfg, name)
        inputs = {**stage_inputs(cfg, name), "upstream": {u: made[u].hash for u in upstream}}
        made[name] = Stage(name, stage_dir(cfg, name), inputs, upstream)
    return made


def stage_hashes(cfg: PipelineConfig) -> dict[str, str]:
    """Expected hash of every stage."""
    return {name: stage.hash for name, stage in plan_stages(cfg).items()}


# ----------------------------------------------------------------------------- stage outputs
def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """``<out>/<stage>``."""
    return Path(cfg.out) / stage


def model_path(cfg: PipelineConfig, records: dict[str, dict], stage: str) -> str:
    """The model a stage hands on (pass-through stages hand on their input)."""
    if stage == "mlm_head" and not records["mlm_head"]["summary"].get("fitted"):
        return cfg.teacher.model
    if stage == "qat" and not cfg.qat.enabled:
        return str(stage_dir(cfg, "finetune"))
    if stage == "export":
        return str(stage_dir(cfg, "export") / onnx_name(cfg))
    return str(stage_dir(cfg, stage))


def onnx_name(cfg: PipelineConfig) -> str:
    """Folder of the ONNX export inside the export stage."""
    return "onnx-int8" if cfg.export.int8 else "onnx"


def _empty_stage(cfg: PipelineConfig, stage: str) -> None:
    with atomic_dir(stage_dir(cfg, stage), overwrite=True):
        pass


def _val_texts(cfg: PipelineConfig, limit: int | None) -> tuple[list, list[int] | None]:
    """The first ``limit`` validation inputs (text pairs and QA inputs as tuples) and labels (none
    for NER / QA: their scores are the stages' own metrics)."""
    if (task := cfg.data.kind) != "classification":
        from distilprune.jobs.tasks import validation_texts

        return validation_texts(task, cfg.data, limit), None
    val = prepare_data(cfg.data).val
    n = len(val) if limit is None else min(limit, len(val))
    texts = val.texts[:n] if val.pairs is None else list(zip(val.texts[:n], val.pairs[:n], strict=True))
    return texts, (val.labels or [])[:n]


# ----------------------------------------------------------------------------- stage runners
def _run_teacher(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.jobs.finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(model=cfg.teacher.model, out=str(stage_dir(cfg, "teacher")),
                                   data=cfg.data, train=cfg.teacher.train, overwrite=True))


def _run_mlm_head(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.jobs.distill import MLMHeadConfig, fit_mlm_head
    from distilprune.models.loading import load_masked_lm

    section, needed = cfg.mlm_head, cfg.mlm_head.enabled
    if needed is None:
        needed = not load_masked_lm(cfg.teacher.model)[1]
    if not needed:
        _empty_stage(cfg, "mlm_head")
        return {"fitted": False, "reason": "the teacher has a pretrained MLM head"}
    train = TrainConfig(max_steps=section.steps, lr=section.lr, batch_size=section.batch_size,
                        patience=None, seed=cfg.distill.train.seed)
    summary = fit_mlm_head(MLMHeadConfig(teacher=cfg.teacher.model, out=str(stage_dir(cfg, "mlm_head")),
                                         corpus=cfg.distill.corpus, train=train, overwrite=True))
    return {**summary, "fitted": True}


def _run_student(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.jobs.distill import StudentConfig, make_student

    return make_student(StudentConfig(model_path(cfg, records, "mlm_head"), str(stage_dir(cfg, "student")),
                                      cfg.student.layers, cfg.student.layer_map, overwrite=True))


def _run_distill(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.jobs.distill import GeneralDistillConfig, general_distill

    section = cfg.distill
    return general_distill(GeneralDistillConfig(
        teacher=model_path(cfg, records, "mlm_head"), out=str(stage_dir(cfg, "distill")),
        student=str(stage_dir(cfg, "student")), corpus=section.corpus, loss=section.loss,
        train=section.train, prune=section.prune, overwrite=True))


def _locked_finetune(cfg: PipelineConfig, records: dict[str, dict], source: str, stage: str,
                     train: TrainConfig, qat: QATConfig | None) -> dict[str, Any]:
    """Mask-locked fine-tuning of ``source`` into ``stage`` (task-distilled when configured)."""
    from distilprune.jobs.distill import task_finetune
    from distilprune.jobs.finetune import FinetuneConfig

    ft = FinetuneConfig(model=source, out=str(stage_dir(cfg, stage)), data=cfg.data, train=train,
                        lock_sparsity=True, qat=qat, overwrite=True)
    teacher = model_path(cfg, records, "teacher") if cfg.finetune.task_distillation else None
    return task_finetune(ft, teacher, cfg.finetune.loss)


def _run_finetune(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    return _locked_finetune(cfg, records, model_path(cfg, records, "distill"), "finetune",
                            cfg.finetune.train, None)


def _run_qat(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    if not cfg.qat.enabled:
        _empty_stage(cfg, "qat")
        return {"enabled": False}
    train = dataclasses.replace(cfg.finetune.train, max_steps=cfg.qat.steps, lr=cfg.qat.lr,
                                patience=None, eval_every=cfg.qat.steps)
    summary = _locked_finetune(cfg, records, model_path(cfg, records, "finetune"), "qat", train,
                               cfg.qat.quant_config())
    return {**summary, "enabled": True}


def _copy_metadata(source: str, target: Path) -> None:
    if (Path(source) / METADATA_FILE).is_file():
        shutil.copy2(Path(source) / METADATA_FILE, target / METADATA_FILE)


def _run_export(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.export import export_onnx
    from distilprune.export.storage import save_compact

    source, section = model_path(cfg, records, "qat"), cfg.export
    texts, _ = _val_texts(cfg, section.parity_texts)
    summary: dict[str, Any] = {"source": source, "compact": None}
    with atomic_dir(stage_dir(cfg, "export"), overwrite=True) as tmp:
        onnx = export_onnx(source, tmp / onnx_name(cfg), int8=section.int8, parity_texts=texts,
                           max_length=section.max_length or cfg.data.max_length)
        _copy_metadata(source, tmp / onnx_name(cfg))
        summary["onnx"] = {**onnx, "path": onnx_name(cfg)}
        if section.compact:
            name = "compact-int8" if section.int8 else "compact"
            summary["compact"] = {**save_compact(source, tmp / name, int8=section.int8), "path": name}
            _copy_metadata(source, tmp / name)
    return summary


def _run_benchmark(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.benchmark.baseline import benchmark_baseline
    from distilprune.benchmark.speed import benchmark_models
    from distilprune.reporting.benchmark import write_report

    section = cfg.benchmark
    paths = {"teacher": model_path(cfg, records, "teacher"), "student": model_path(cfg, records, "qat"),
             "compressed": model_path(cfg, records, "export")}
    texts, labels = _val_texts(cfg, section.limit)
    settings = {"threads": section.threads, "batch_sizes": section.batch_sizes,
                "seq_len": section.seq_len or cfg.data.max_length, "repeats": section.repeats,
                "warmup": section.warmup}
    measured = iter(benchmark_models([paths[m] for m in section.models if m != "baseline"], texts, labels,
                                     **settings))
    results = []
    for role in section.models:
        if role == "baseline":
            train = prepare_data(cfg.data).train
            results.append(benchmark_baseline(train.texts, train.labels, texts, labels, **settings))
        else:
            results.append(next(measured))
    with atomic_dir(stage_dir(cfg, "benchmark"), overwrite=True) as tmp:
        files = [tmp / f"benchmark.{ext}" for ext in ("json", "md", "png")]
        report = write_report(results, *files)
    report["files"] = {ext: f"benchmark.{ext}" for ext in ("json", "md", "png")}
    report["roles"] = list(section.models)
    return report


def _run_report(cfg: PipelineConfig, records: dict[str, dict]) -> dict[str, Any]:
    from distilprune.reporting.pipeline import write_report

    with atomic_dir(stage_dir(cfg, "report"), overwrite=True) as tmp:
        files = write_report(tmp, cfg, records)
    return {"files": {k: Path(v).name for k, v in files.items()}}


RUNNERS: dict[str, Callable[[PipelineConfig, dict[str, dict]], dict[str, Any]]] = {
    "teacher": _run_teacher, "mlm_head": _run_mlm_head, "student": _run_student,
    "distill": _run_distill, "finetune": _run_finetune, "qat": _run_qat, "export": _run_export,
    "benchmark": _run_benchmark, "report": _run_report,
}


# ----------------------------------------------------------------------------- driver
@dataclass
class PipelineResult:
    """What a run did: ``status[stage]`` is ``ran``, ``skipped`` (up to date) or ``not selected``."""

    out: Path
    status: dict[str, str]
    records: dict[str, dict]

    @property
    def report(self) -> Path:
        """The markdown model card."""
        return self.out / "report" / "report.md"


def parse_stages(stages: str | Sequence[str] | None) -> list[str]:
    """``"distill,finetune"`` (or a list; ``-`` may replace ``_``) -> validated stage names."""
    return select_stages(STAGES, stages, lambda name: name.replace("-", "_"))


def run_pipeline(cfg: PipelineConfig, stages: str | Sequence[str] | None = None,
                 force: bool = False) -> PipelineResult:
    """Run the selected stages (default all) in order, skipping those already up to date.

    ``force`` re-runs the selected stages even when up to date (downstream stages then re-run
    too, since they consumed an older output). A selected stage whose upstream is missing or
    out of date, and not selected, is a :class:`UserError`. ``cfg.out`` is locked for the run.
    """
    cfg.validate()
    selected = parse_stages(stages)
    preflight(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    with locked_dir(cfg.out):  # a second run of the recipe fails now, not mid-stage
        planned = plan_stages(cfg)  # hashes the data and corpus files once for both passes
        _run_stages(cfg, planned, selected, force, dry=True)  # a bad selection fails before any work
        return _run_stages(cfg, planned, selected, force)


def _run_stages(cfg: PipelineConfig, planned: dict[str, Stage], selected: list[str], force: bool,
                dry: bool = False) -> PipelineResult:
    """:func:`run_pipeline`'s loop over the ``planned`` stages (``cfg.out`` locked); ``dry`` runs
    and logs nothing, it only checks that every stage to run will have its upstream outputs."""
    status, records = run_stages(planned, lambda stage, records: RUNNERS[stage](cfg, records),
                                 selected, force, dry)
    return PipelineResult(Path(cfg.out), status, records)


__all__ = [
    "STAGES", "BenchmarkSection", "DistillSection", "ExportSection", "FinetuneSection",
    "MLMHeadSection", "PipelineConfig", "PipelineResult", "QATSection", "StudentSection",
    "TeacherSection", "load_recipe", "parse_stages", "run_pipeline", "stage_hashes",
    "upstream_of",
]
