"""One recipe, one command: the whole Prune-OFA pipeline, resumable stage by stage.

teacher fine-tune -> (MLM head fit, when the teacher has none) -> student init -> pruned
general distillation (Prune OFA) -> mask-locked fine-tune (optionally task-distilled) -> QAT
int8 (mask locked) -> ONNX int8 + compact export -> benchmark -> report.

The recipe is compiled into a stage graph (:func:`pipeline_graph`) and run by
:mod:`distilprune.jobs.graph`, as any ``stages:`` recipe is: every stage writes ``<out>/<stage>/``
atomically and records the hash of what it depends on (its settings, data/corpus file digests and
the upstream stages' hashes) plus the run ids of the upstream outputs it consumed. A stage is
skipped when its record matches: a rerun continues where it stopped, and a changed section re-runs
that stage and everything downstream. The export, benchmark and report stages are the pipeline's
own kinds (``pipeline_export``, ``pipeline_benchmark``, ``pipeline_report``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilprune.config import load_run_recipe, to_dict
from distilprune.errors import require, require_at_least
from distilprune.io import atomic_dir
from distilprune.jobs.common import DataConfig, prepare_data
from distilprune.jobs.distill import CorpusConfig, DistillLoss, TaskLoss
from distilprune.jobs.graph import GraphRecipe, PipelineResult, StageSpec, plan, run_graph
from distilprune.jobs.staging import select_stages
from distilprune.prune import PruneConfig
from distilprune.quantize import QATConfig
from distilprune.train import TrainConfig

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


# ----------------------------------------------------------------------------- the stage graph
def needs_mlm_head(cfg: PipelineConfig) -> bool:
    """Whether the pipeline fits an MLM head (``mlm_head.enabled``; ``null``: when the teacher has
    no pretrained one)."""
    if cfg.mlm_head.enabled is not None:
        return cfg.mlm_head.enabled
    from distilprune.models.loading import load_masked_lm

    return not load_masked_lm(cfg.teacher.model)[1]


def omitted_stages(cfg: PipelineConfig) -> dict[str, str]:
    """The stages of :data:`STAGES` this recipe does without, each with the reason."""
    omitted = {}
    if not needs_mlm_head(cfg):
        omitted["mlm_head"] = ("mlm_head.enabled is false" if cfg.mlm_head.enabled is False
                               else "the teacher has a pretrained MLM head")
    if not cfg.qat.enabled:
        omitted["qat"] = "qat.enabled is false"
    return omitted


def pipeline_graph(cfg: PipelineConfig, omitted: dict[str, str] | None = None) -> GraphRecipe:
    """The pipeline as a stage graph (:mod:`distilprune.jobs.graph`): each stage of :data:`STAGES`
    that the recipe needs (see :func:`omitted_stages`) is a graph kind, wired by ``from:`` to the
    stages it reads."""
    omitted = omitted_stages(cfg) if omitted is None else omitted
    specs: dict[str, StageSpec] = {}

    def stage(name: str, kind: str, settings: dict[str, Any], **sources: str | list[str]) -> None:
        specs[name] = StageSpec(name, kind, settings, sources)

    data, teacher = to_dict(cfg.data), cfg.teacher.model
    stage("teacher", "finetune", {"model": teacher, "data": data, "train": to_dict(cfg.teacher.train)})
    # the masked-LM teacher: the teacher model itself (a setting), or the fitted head (from: mlm_head)
    mlm_teacher, wired = {"teacher": teacher}, {}
    if "mlm_head" not in omitted:
        head = cfg.mlm_head
        train = TrainConfig(max_steps=head.steps, lr=head.lr, batch_size=head.batch_size, patience=None,
                            seed=cfg.distill.train.seed)
        stage("mlm_head", "fit_mlm_head", {"teacher": teacher, "corpus": to_dict(cfg.distill.corpus),
                                           "train": to_dict(train)})
        mlm_teacher, wired = {}, {"teacher": "mlm_head"}
    stage("student", "student", {**mlm_teacher, "layers": cfg.student.layers,
                                 "layer_map": cfg.student.layer_map}, **wired)
    stage("distill", "distill_mlm", {**mlm_teacher, **to_dict(cfg.distill)}, **wired, student="student")
    kd = {"teacher": "teacher"} if cfg.finetune.task_distillation else {}
    locked = {"data": data, "lock_sparsity": True, **({"loss": to_dict(cfg.finetune.loss)} if kd else {})}
    stage("finetune", "finetune", {**locked, "train": to_dict(cfg.finetune.train)}, model="distill", **kd)
    final = "finetune"
    if "qat" not in omitted:
        train = dataclasses.replace(cfg.finetune.train, max_steps=cfg.qat.steps, lr=cfg.qat.lr,
                                    patience=None, eval_every=cfg.qat.steps)
        quant = to_dict(cfg.qat.quant_config())
        stage("qat", "finetune", {**locked, "train": to_dict(train), "qat": quant}, model="finetune", **kd)
        final = "qat"
    stage("export", "pipeline_export", {"data": data, "export": to_dict(cfg.export)}, model=final)
    stage("benchmark", "pipeline_benchmark", {"data": data, "benchmark": to_dict(cfg.benchmark)},
          teacher="teacher", student=final, compressed="export")
    stage("report", "pipeline_report", {"recipe": to_dict(cfg)}, stages=list(specs))
    return GraphRecipe(cfg.out, specs, cfg.threads)


def stage_hashes(cfg: PipelineConfig) -> dict[str, str]:
    """Expected hash of every stage the recipe runs."""
    return {name: stage.hash for name, stage in plan(pipeline_graph(cfg)).items()}


# ----------------------------------------------------------------------------- the pipeline's own kinds
@dataclass
class ExportStageConfig:
    """The ``export`` stage: ``model`` to ONNX (int8 with ``export.int8``) and to compact storage,
    both in ``out``, the ONNX parity checked on the validation split of ``data``."""

    model: str = ""
    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    export: ExportSection = field(default_factory=ExportSection)
    overwrite: bool = False


def onnx_name(section: ExportSection) -> str:
    """Folder of the ONNX export inside the export stage."""
    return "onnx-int8" if section.int8 else "onnx"


def export_stage(cfg: ExportStageConfig) -> dict[str, Any]:
    """Run the ``export`` stage; returns what each export reported."""
    from distilprune.export import export_onnx
    from distilprune.export.storage import save_compact
    from distilprune.jobs.deploy import copy_metadata

    section, onnx = cfg.export, onnx_name(cfg.export)
    texts, _ = _val_texts(cfg.data, section.parity_texts)
    summary: dict[str, Any] = {"source": cfg.model, "compact": None}
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        result = export_onnx(cfg.model, tmp / onnx, int8=section.int8, parity_texts=texts,
                             max_length=section.max_length or cfg.data.max_length)
        copy_metadata(Path(cfg.model), tmp / onnx)
        summary["onnx"] = {**result, "path": onnx}
        if section.compact:
            name = "compact-int8" if section.int8 else "compact"
            summary["compact"] = {**save_compact(cfg.model, tmp / name, int8=section.int8), "path": name}
            copy_metadata(Path(cfg.model), tmp / name)
    return summary


def _val_texts(data: DataConfig, limit: int | None) -> tuple[list, list[int] | None]:
    """The first ``limit`` validation inputs (text pairs and QA inputs as tuples) and labels (none
    for NER / QA: their scores are the stages' own metrics)."""
    if (task := data.kind) != "classification":
        from distilprune.jobs.tasks import validation_texts

        return validation_texts(task, data, limit), None
    val = prepare_data(data).val
    n = len(val) if limit is None else min(limit, len(val))
    texts = val.texts[:n] if val.pairs is None else list(zip(val.texts[:n], val.pairs[:n], strict=True))
    return texts, (val.labels or [])[:n]


@dataclass
class BenchmarkStageConfig:
    """The ``benchmark`` stage: ``benchmark.models`` by role (``teacher``, ``student``, ``compressed``:
    the export stage's ONNX; ``baseline``: TF-IDF + logistic regression fitted on the training
    split) side by side on the validation split of ``data``."""

    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)
    teacher: str = ""
    student: str = ""
    compressed: str = ""  # an export stage's folder
    overwrite: bool = False


def benchmark_stage(cfg: BenchmarkStageConfig) -> dict[str, Any]:
    """Run the ``benchmark`` stage into ``out/benchmark.{json,md,png}``; returns the report."""
    from distilprune.benchmark.baseline import benchmark_baseline
    from distilprune.benchmark.speed import benchmark_models
    from distilprune.jobs.staging import read_record
    from distilprune.reporting.benchmark import write_report

    section = cfg.benchmark
    onnx = (read_record(cfg.compressed) or {}).get("summary", {}).get("onnx", {}).get("path", "")
    paths = {"teacher": cfg.teacher, "student": cfg.student, "compressed": str(Path(cfg.compressed) / onnx)}
    texts, labels = _val_texts(cfg.data, section.limit)
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
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        report = write_report(results, *(tmp / f"benchmark.{ext}" for ext in ("json", "md", "png")))
    return {**report, "files": {ext: f"benchmark.{ext}" for ext in ("json", "md", "png")},
            "roles": list(section.models)}


@dataclass
class ReportStageConfig:
    """The ``report`` stage: the model card of the pipeline ``recipe`` from the records of its
    ``stages`` (their folders)."""

    out: str = ""
    recipe: PipelineConfig = field(default_factory=PipelineConfig)
    stages: list[str] = field(default_factory=list)
    overwrite: bool = False


def report_stage(cfg: ReportStageConfig) -> dict[str, Any]:
    """Write ``out/report.{md,html}`` (and its figures); returns the file names."""
    from distilprune.jobs.staging import read_record
    from distilprune.reporting.pipeline import write_report

    records = {Path(folder).name: read_record(folder) or {} for folder in cfg.stages}
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        files = write_report(tmp, cfg.recipe, records)
    return {"files": {k: Path(v).name for k, v in files.items()}}


# ----------------------------------------------------------------------------- driver
def parse_stages(stages: str | Sequence[str] | None) -> list[str] | None:
    """``"distill,finetune"`` (or a list; ``-`` may replace ``_``) -> validated stage names."""
    return None if stages is None else select_stages(STAGES, stages, lambda name: name.replace("-", "_"))


def run_pipeline(cfg: PipelineConfig, stages: str | Sequence[str] | None = None,
                 force: bool = False) -> PipelineResult:
    """Run the selected stages (default all) of :func:`pipeline_graph` in order, skipping those
    already up to date.

    ``force`` re-runs the selected stages even when up to date (downstream stages then re-run
    too, since they consumed an older output). A selected stage whose upstream is missing or
    out of date, and not selected, is a :class:`UserError`, as is one the recipe does without.
    ``cfg.out`` is locked for the run.
    """
    cfg.validate()
    selected = parse_stages(stages)
    preflight(cfg)
    omitted = omitted_stages(cfg)
    for name in selected or ():
        require(name not in omitted, f"stage {name!r} is not part of this recipe: {omitted.get(name)}")
    return run_graph(pipeline_graph(cfg, omitted), selected, force)


__all__ = [
    "STAGES", "BenchmarkSection", "DistillSection", "ExportSection", "FinetuneSection",
    "MLMHeadSection", "PipelineConfig", "PipelineResult", "QATSection", "StudentSection",
    "TeacherSection", "load_recipe", "omitted_stages", "parse_stages", "pipeline_graph", "run_pipeline",
    "stage_hashes",
]
