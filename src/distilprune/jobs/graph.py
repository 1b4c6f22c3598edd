"""A recipe of named stages: each stage is one command's settings (the keys of that command's
recipe section), wired to the stages before it by ``from:``; ``distilprune run`` runs it.

    out: runs/sparse-pretrain
    stages:
      head:
        kind: fit_mlm_head            # also: student (a half-depth copy of a teacher)
        teacher: minilm-l6
      sparse80:
        kind: distill_mlm
        from: {teacher: head}         # config key (dotted) <- that stage's output directory
        prune: {method: block, final_sparsity: 0.8}
      sst2:
        kind: finetune                # with teacher: (and loss:) it is task-distilled
        from: {model: sparse80}
        data: {train: ../shared/data/sst2/train.tsv}
        lock_sparsity: true
      sst2-int8:
        kind: export                  # the keys of export / evaluate / benchmark are their options
        from: {model: sst2}
        int8: true
      speed:
        kind: benchmark
        from: {models: [sst2, sst2-int8]}   # a list setting takes a list of stages
        data: ../shared/data/sst2/dev.tsv

Every stage writes ``<out>/<name>/`` and is staged by :mod:`distilprune.jobs.staging`: its hash
covers its kind, its settings (a ``from:`` key by the upstream stage's hash, not its path), the
digests of its data and corpus files and its upstream stages' hashes, so a rerun skips what is
up to date and re-runs what changed and everything after it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distilprune.config import from_dict, load_yaml, merge, nested, plain, to_dict
from distilprune.errors import require, require_at_least
from distilprune.io import locked_dir
from distilprune.jobs.staging import Stage, file_digests, run_stages, select_stages

TOP_KEYS = ("out", "threads", "stages")
SET_BY_RUN = ("out", "overwrite")  # every stage writes <out>/<name>, replacing what was there


@dataclasses.dataclass(frozen=True)
class Kind:
    """A stage kind: the config it reads (``module:Class``) and the job that runs it; ``brief``:
    its stage record keeps the plain values of the job's result, not its tables."""

    config: str
    job: str
    brief: bool = False

    def config_class(self) -> type:
        return _import(self.config)


KINDS = {
    "finetune": Kind("distilprune.jobs.finetune:FinetuneConfig", "distilprune.jobs.distill:task_finetune"),
    "student": Kind("distilprune.jobs.distill:StudentConfig", "distilprune.jobs.distill:make_student"),
    "fit_mlm_head": Kind("distilprune.jobs.distill:MLMHeadConfig", "distilprune.jobs.distill:fit_mlm_head"),
    "distill_mlm": Kind("distilprune.jobs.distill:GeneralDistillConfig",
                        "distilprune.jobs.distill:general_distill"),
    "shrink": Kind("distilprune.jobs.shrink:ShrinkConfig", "distilprune.jobs.shrink:shrink_model"),
    "export": Kind("distilprune.jobs.deploy:ExportConfig", "distilprune.jobs.deploy:export_model", True),
    "quantize": Kind("distilprune.jobs.deploy:QuantizeConfig", "distilprune.jobs.deploy:quantize_model",
                     True),
    "evaluate": Kind("distilprune.jobs.inference:EvaluateConfig", "distilprune.jobs.inference:evaluate",
                     True),
    "predict": Kind("distilprune.jobs.inference:PredictConfig", "distilprune.jobs.inference:predict", True),
    "benchmark": Kind("distilprune.jobs.deploy:BenchmarkConfig", "distilprune.jobs.deploy:benchmark_models",
                      True),
    # the Prune OFA pipeline's own stages (jobs/pipeline.py compiles its recipe into a graph)
    **{f"pipeline_{stage}": Kind(f"distilprune.jobs.pipeline:{stage.title()}StageConfig",
                                 f"distilprune.jobs.pipeline:{stage}_stage")
       for stage in ("export", "benchmark", "report")},
}


def _import(path: str) -> Any:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass
class StageSpec:
    """One stage of the recipe: its kind, settings and ``from:`` wiring (key -> stage)."""

    name: str
    kind: str
    settings: dict[str, Any]
    sources: dict[str, str | list[str]]

    def upstream(self) -> tuple[str, ...]:
        """The stages it reads, each once, in order."""
        return tuple(dict.fromkeys(n for v in self.sources.values() for n in _names(v)))


@dataclasses.dataclass
class GraphRecipe:
    out: str
    stages: dict[str, StageSpec]
    threads: int | None = None


def is_graph_recipe(data: dict[str, Any]) -> bool:
    """Whether a recipe mapping is a stage graph (it has ``stages:``)."""
    return "stages" in data


def _names(source: str | list[str]) -> list[str]:
    """A ``from:`` value (one stage or a list) as a list of stage names."""
    return [source] if isinstance(source, str) else source


def _stage_names(value: Any) -> bool:
    """Whether a ``from:`` value is a stage name or a non-empty list of them."""
    return isinstance(value, str) or (isinstance(value, list) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def _spec(name: str, body: Any) -> StageSpec:
    where = f"stages.{name}"
    require(isinstance(body, dict), f"{where}: expected a mapping of settings")
    body = copy.deepcopy(body)  # YAML anchors share one mapping between stages
    kind = body.pop("kind", None)
    require(kind in KINDS, f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    sources = body.pop("from", None) or {}
    require(isinstance(sources, dict) and all(_stage_names(v) for v in sources.values()),
            f"{where}.from: expected a mapping of config key -> stage name (or list of stage names)")
    set_by_run = [key for key in SET_BY_RUN if key in body]
    require(not set_by_run, f"{where}.{set_by_run[0] if set_by_run else ''}: set by the run "
                            f"(every stage writes <out>/{name})")
    return StageSpec(name, kind, body, {str(k): v if isinstance(v, str) else list(v)
                                        for k, v in sources.items()})


def parse_graph(data: dict[str, Any], default_out: str) -> GraphRecipe:
    """A stage-graph recipe mapping, checked: known top-level keys and kinds, ``from:`` naming
    earlier stages, every stage's settings valid for its command (unknown keys are errors)."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    require(not unknown, f"recipe: unknown top-level key {unknown[0]!r} (valid keys: {', '.join(TOP_KEYS)})"
            if unknown else "")
    stages = data.get("stages")
    require(isinstance(stages, dict) and bool(stages), "recipe: stages: expected a mapping of named stages")
    specs = {str(name): _spec(str(name), body) for name, body in stages.items()}
    seen: set[str] = set()
    for spec in specs.values():
        for key, value in spec.sources.items():
            for source in _names(value):
                require(source in specs, f"stages.{spec.name}.from.{key}: no stage named {source!r}")
                require(source in seen, f"stages.{spec.name}.from.{key}: stage {source!r} must come "
                                        f"before {spec.name!r}")
        seen.add(spec.name)
        job_config(spec, Path("<out>"))  # every unknown or mistyped key fails now
    threads = data.get("threads")
    if threads is not None:
        require_at_least("threads", threads, 1)
    return GraphRecipe(str(data.get("out") or default_out), specs, threads)


def load_graph(path: str | Path, overrides: dict[str, Any] | None = None) -> GraphRecipe:
    """Read a stage-graph recipe with dotted ``--set`` overrides (``stages.dense.train.lr=1e-4``)."""
    data = merge(load_yaml(path), overrides or {}, keep_none=True)
    return parse_graph(data, str(Path("runs") / Path(path).stem))


def _settings(spec: StageSpec, paths: dict[str, str]) -> dict[str, Any]:
    """The stage's settings with each ``from:`` key set to ``paths[source]``."""
    settings = copy.deepcopy(spec.settings)
    for key, source in spec.sources.items():
        value = paths[source] if isinstance(source, str) else [paths[s] for s in source]
        settings = merge(settings, nested(key, value))
    return settings


def job_config(spec: StageSpec, out: Path, paths: dict[str, str] | None = None) -> tuple[Any, dict]:
    """The stage's job config (``out`` = ``<out>/<name>``, overwrite on) and the task-distillation
    arguments of a ``finetune`` stage (``teacher``, ``loss``)."""
    paths = paths or {source: f"<{source}>" for source in spec.upstream()}
    settings, extra = _settings(spec, paths), {}
    where = f"stages.{spec.name}"
    if spec.kind == "finetune":
        from distilprune.jobs.distill import task_distillation_settings

        settings, extra = task_distillation_settings(settings, where)
    config_class = KINDS[spec.kind].config_class()
    fields = {f.name for f in dataclasses.fields(config_class)}
    settings |= {key: value for key, value in (("out", str(out / spec.name)), ("overwrite", True))
                 if key in fields}
    cfg = from_dict(config_class, settings, where)
    return cfg, extra


def _input_paths(cfg: Any) -> dict[str, str | list[str] | None]:
    """The config keys (dotted) that name the files a job reads, with their values: a fine-tune's
    ``data.train`` / ``data.validation``, the ``data`` file of export, evaluate, ..., a
    distillation's ``corpus.files``; none for a job that reads only models (``student``)."""
    from distilprune.jobs.common import DataConfig

    if isinstance(getattr(cfg, "data", None), DataConfig):
        return {"data.train": cfg.data.train, "data.validation": cfg.data.validation}
    if hasattr(cfg, "data"):
        return {"data": cfg.data}
    return {"corpus.files": cfg.corpus.files} if hasattr(cfg, "corpus") else {}


def _input_files(paths: dict[str, str | list[str] | None]) -> tuple[list[str], str]:
    """The digests of the files at ``paths`` (:func:`_input_paths`; they go into a stage hash) and
    what they are (``data``, ``corpus``); the default corpus where ``corpus.files`` is empty."""
    if not paths:
        return [], "files"
    what = next(iter(paths)).partition(".")[0]
    files = [f for value in paths.values() for f in ([value] if isinstance(value, str) else value or []) if f]
    if what == "corpus" and not files:
        from distilprune.data.corpus import default_corpus_files
        from distilprune.models.registry import cache_dir

        files = default_corpus_files(cache_dir() / "data")
    return file_digests(files, f"{what} file"), what


def _real_input_paths(config: dict[str, Any], paths: dict[str, str | list[str] | None]) -> dict[str, Any]:
    """``config`` with its input files' ``paths`` absolute and through symlinks, as a stage hash
    takes them: one file spelt two ways (``benchmarks/work/x`` linked to ``/cache/x``, a relative or
    absolute path) is one input; its contents are hashed beside."""
    def real(path: str) -> str:
        return str(Path(path).resolve()) if path else path

    for key, value in paths.items():
        if value:
            resolved = list(map(real, value)) if isinstance(value, list) else real(value)
            config = merge(config, nested(key, resolved))
    return config


# Settings a kind gained after stages of it were made, with the value that keeps the old behaviour.
# While a stage holds that value the setting is left out of its inputs, so the stages made before
# it existed keep their hash (and their downstream stages theirs) instead of being made again.
LATER_SETTINGS: dict[str, dict[str, Any]] = {
    "distill_mlm": {"lock_sparsity": False, "loss.alpha_mse": 0.0},
}


def without_later_defaults(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the :data:`LATER_SETTINGS` of ``kind`` that hold their old-behaviour value."""
    config = copy.deepcopy(config)
    for dotted, value in LATER_SETTINGS.get(kind, {}).items():
        *parents, key = dotted.split(".")
        holder = config
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and key in holder and holder[key] == value:
            del holder[key]
    return config


def plan(recipe: GraphRecipe) -> dict[str, Stage]:
    """Every stage with its inputs: kind, settings (``from:`` keys as the upstream hash), file
    digests and upstream hashes."""
    out, planned = Path(recipe.out), {}
    for name, spec in recipe.stages.items():
        upstream = spec.upstream()
        hashes = {u: planned[u].hash for u in upstream}
        cfg, extra = job_config(spec, out, {u: f"stage:{h}" for u, h in hashes.items()})
        paths = _input_paths(cfg)
        files, what = _input_files(paths)
        config = without_later_defaults(spec.kind, _real_input_paths(to_dict(cfg), paths))
        inputs = {"kind": spec.kind, "config": config,
                  **{k: plain(v) for k, v in extra.items()}, what: files, "upstream": hashes}
        planned[name] = Stage(name, out / name, inputs, upstream)
    return planned


def _runner(recipe: GraphRecipe) -> Callable[[str, dict[str, dict]], Any]:
    out = Path(recipe.out)

    def work(name: str, records: dict[str, dict]) -> Any:
        spec = recipe.stages[name]
        cfg, extra = job_config(spec, out, {u: str(out / u) for u in spec.upstream()})
        result = _import(KINDS[spec.kind].job)(cfg, **extra)
        return _brief(result) if KINDS[spec.kind].brief else result

    return work


def _brief(result: Any) -> Any:
    """A mapping's plain values (scores, sizes, paths), not its tables."""
    if not isinstance(result, dict):
        return result
    return {k: v for k, v in result.items() if isinstance(v, str | int | float | bool) or v is None}


def select(recipe: GraphRecipe, stages: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` (or a list) -> validated stage names; ``None``: all."""
    return select_stages(list(recipe.stages), stages)


def with_upstream(recipe: GraphRecipe, names: Sequence[str]) -> list[str]:
    """``names`` and every stage they read from, directly or not, in the recipe's order."""
    needed, todo = set(), list(select(recipe, names))
    while todo:
        if (name := todo.pop()) not in needed:
            needed.add(name)
            todo.extend(recipe.stages[name].upstream())
    return [name for name in recipe.stages if name in needed]


@dataclasses.dataclass
class PipelineResult:
    """What a run did: ``status[stage]`` is ``ran``, ``skipped`` (up to date) or ``not selected``."""

    out: Path
    status: dict[str, str]
    records: dict[str, dict]

    @property
    def report(self) -> Path:
        """The markdown model card (a Prune OFA pipeline's)."""
        return self.out / "report" / "report.md"


def run_graph(recipe: GraphRecipe, stages: str | Sequence[str] | None = None,
              force: bool = False) -> PipelineResult:
    """Run the selected stages (default all) in order, skipping those up to date; the output root
    is locked for the run."""
    selected = select(recipe, stages)
    if recipe.threads:
        import torch

        torch.set_num_threads(recipe.threads)
    with locked_dir(recipe.out):
        planned = plan(recipe)  # hashes the data and corpus files once for both passes
        run_stages(planned, _runner(recipe), selected, force, dry=True)
        status, records = run_stages(planned, _runner(recipe), selected, force)
    return PipelineResult(Path(recipe.out), status, records)
