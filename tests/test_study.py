"""The comparison study on tiny random models: grid runs, seed aggregation, best-lr selection,
resuming (skip finished runs, re-run changed ones), reports, and vocabulary coverage."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import ARCHITECTURES, REPO_ROOT, SAMPLE_TEXTS

from distilprune.config import from_dict, to_dict
from distilprune.data.coverage import vocabulary_coverage, word_kind
from distilprune.errors import UserError
from distilprune.jobs.study import (
    StudyConfig,
    aggregate,
    grid,
    learning_rates_line,
    load_study_recipe,
    model_labels,
    run_config,
    run_stage_of,
    run_study,
    select_best,
)
from distilprune.models.tiny import build_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"
LR = 5e-3


@pytest.fixture(autouse=True)
def no_run_plots(monkeypatch):
    """Skip the per-run PNGs of ``finetune`` (tested with it; ~half of a tiny run's time)."""
    from distilprune.jobs import finetune as finetune_job

    for name in ("plot_confusion_matrix", "plot_pr_curve", "save_losses_plot"):
        monkeypatch.setattr(finetune_job, name, lambda *args, **kwargs: None)


def study_config(tmp_path: Path, model: Path, data: Path, **overrides) -> StudyConfig:
    """2 preprocess variants × 2 imbalance × 1 lr × 2 seeds, 3 steps of batch 4, max_length 32."""
    recipe = {
        "out": str(tmp_path / "study"),
        "data": {"train": str(data), "max_length": 32},
        "models": [str(model)],
        "preprocess": [[], ["keyword", "tweet"]],
        "imbalance": ["none", "oversample"],
        "learning_rates": [LR],
        "seeds": [1, 2],
        "train": {"max_steps": 3, "batch_size": 4, "patience": None},
        "eval_batch_size": 16,
        **overrides,
    }
    return from_dict(StudyConfig, recipe, "study")


def run_metrics(study_dir: Path, slug: str) -> dict:
    return json.loads((study_dir / "runs" / slug / "metrics.json").read_text())


def check_aggregation(study_dir: Path, result: dict) -> None:
    """Every cell's mean/std equal those of the per-run metrics read back from disk."""
    for cell in result["cells"]:
        members = [r for r in result["runs"] if (r["model"], r["preprocess"], r["imbalance"], r["lr"])
                   == (cell["model"], cell["preprocess"], cell["imbalance"], cell["lr"])]
        assert cell["n"] == len(members) == 2
        for metric in ("accuracy", "f1"):
            values = [run_metrics(study_dir, r["slug"])[metric] for r in members]
            assert cell[f"{metric}_mean"] == pytest.approx(statistics.fmean(values))
            assert cell[f"{metric}_std"] == pytest.approx(statistics.stdev(values))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_study_end_to_end(arch, tiny_model_factory, tiny_csv, tmp_path):
    cfg = study_config(tmp_path, tiny_model_factory(arch), tiny_csv)
    result = run_study(cfg)
    out = Path(cfg.out)
    assert result["counts"] == {"ran": 8, "skipped": 0, "pending": 0, "total": 8, "done": 8}
    assert result["complete"]
    assert json.loads((out / "study.json").read_text())["cells"] == result["cells"]
    assert (out / "study_accuracy.png").read_bytes().startswith(PNG)
    markdown = (out / "study.md").read_text()
    assert "keyword+tweet" in markdown and "oversample" in markdown and "Vocabulary coverage" in markdown
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 8
    assert all((r / "metrics.json").is_file() and not list(r.glob("*.safetensors")) for r in runs)
    check_aggregation(out, result)
    assert len(result["best"]) == 4 and all(b["lr"] == LR for b in result["best"])
    coverage = result["coverage"]
    assert [c["preprocess"] for c in coverage] == ["none", "keyword+tweet"]
    for row in coverage:
        assert all(0.0 <= row[k] <= 1.0 for k in ("split_word_share", "split_type_share", "unk_token_share"))
        assert row["subwords_per_word"] >= 1.0
    stamps = {r.name: (r / "distilprune.json").stat().st_mtime_ns for r in runs}
    again = run_study(cfg)
    assert again["counts"]["ran"] == 0 and again["counts"]["skipped"] == 8
    assert {r.name: (r / "distilprune.json").stat().st_mtime_ns for r in runs} == stamps
    assert again["cells"] == result["cells"]


def test_max_runs_changed_lr_and_best_lr(tiny_model_factory, tiny_csv, tmp_path):
    model = tiny_model_factory("bert")
    cfg = study_config(tmp_path, model, tiny_csv, preprocess=[[]], imbalance=["none"], max_runs=1)
    first = run_study(cfg)
    assert [r["status"] for r in first["runs"]] == ["ran", "pending"] and not first["complete"]
    cfg.max_runs = None
    assert [r["status"] for r in run_study(cfg)["runs"]] == ["skipped", "ran"]
    cfg.learning_rates = [LR, 1e-5]
    result = run_study(cfg)
    assert [(r["lr"], r["status"]) for r in result["runs"]] == [
        (LR, "skipped"), (LR, "skipped"), (1e-5, "ran"), (1e-5, "ran")]
    check_aggregation(Path(cfg.out), result)
    (best,) = result["best"]
    assert best == max(result["cells"], key=lambda c: (c["accuracy_mean"], c["f1_mean"]))
    markdown = (Path(cfg.out) / "study.md").read_text()
    assert f"| {best['lr']:g} |" in markdown and f"Learning rates: {LR:g}, 1e-05." in markdown


def test_run_stage_hash_tracks_what_changes_results(tiny_model_factory, tiny_csv, tmp_path):
    cfg = study_config(tmp_path, tiny_model_factory("bert"), tiny_csv)
    cell = next(grid(cfg))
    base = run_stage_of(run_config(cfg, cell), None, ["sha"]).hash
    moved = study_config(tmp_path / "elsewhere", tiny_model_factory("bert"), tiny_csv,
                         train={"max_steps": 3, "batch_size": 4, "patience": None, "checkpoint_every": 5})
    assert run_stage_of(run_config(moved, cell), None, ["sha"]).hash == base  # output dir, checkpointing
    assert run_stage_of(run_config(cfg, cell), None, ["other"]).hash != base  # data content
    cfg.train.max_steps = 4
    assert run_stage_of(run_config(cfg, cell), None, ["sha"]).hash != base  # budget


def test_aggregate_and_select_best():
    def run(lr, seed, acc, f1):
        return {"model": "m", "preprocess": "none", "imbalance": "none", "lr": lr, "seed": seed,
                "status": "ran", "metrics": {"accuracy": acc, "f1": f1}}

    runs = [run(1e-4, 1, 0.8, 0.7), run(1e-4, 2, 0.9, 0.6), run(5e-5, 1, 0.85, 0.9),
            run(5e-5, 2, 0.85, 0.9), run(1e-3, 1, 0.5, 0.5),
            {"model": "m", "preprocess": "none", "imbalance": "none", "lr": 1e-3, "seed": 2,
             "status": "pending"}]
    cells = {c["lr"]: c for c in aggregate(runs)}
    assert cells[1e-4]["accuracy_mean"] == pytest.approx(0.85)
    assert cells[1e-4]["accuracy_std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert cells[1e-3]["n"] == 1 and cells[1e-3]["accuracy_std"] == 0.0
    (best,) = select_best(list(cells.values()))
    assert best["lr"] == 5e-5  # same mean accuracy as 1e-4, higher F1


@pytest.mark.parametrize(("recipe", "message"), [
    ("out: x\nmodels: [minilm-l6]\nlearning_rate: [1.0e-4]\n", "unknown key 'learning_rate'"),
    ("models: [minilm-l6]\npreprocess: [[], [tweets]]\n", "'tweets'"),
    ("models: [minilm-l6]\ndata: {imbalance: oversample}\n", "study level"),
    ("models: [minilm-l6]\npreprocess: [[tweet], [tweet, html]]\n", "repeat"),
    ("models: [minilm-l6]\nmodel_learning_rates: {mpnet-base: [5.0e-5]}\n", "not in models"),
    ("models: [minilm-l6]\nmodel_learning_rates: {minilm-l6: []}\n", "distinct values"),
    ("models: [minilm-l6]\nmodel_learning_rates: {minilm-l6: [-1.0e-4]}\n", "positive"),
    ("models: [minilm-l6]\nmodel_learning_rates: {minilm-l6: [fast]}\n", "expected float"),
])
def test_recipe_errors(tmp_path, recipe, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe)
    with pytest.raises(UserError, match=message):
        load_study_recipe(bad)


def test_per_model_learning_rates_and_shipped_recipe(tmp_path):
    cfg = from_dict(StudyConfig, {"models": ["a", "b"], "learning_rates": [1e-4, 5e-5],
                                  "model_learning_rates": {"b": ["3e-5"]}, "seeds": [1]})
    assert [(c.model, c.lr) for c in grid(cfg)] == [("a", 1e-4), ("a", 5e-5), ("b", 3e-5)]
    assert learning_rates_line(to_dict(cfg)) == "Learning rates: 0.0001, 5e-05 (b: 3e-05)."
    cfg = load_study_recipe(REPO_ROOT / "recipes" / "disaster-study.yaml")
    per_model = {m: len([c for c in grid(cfg) if c.model == m]) for m in cfg.models}
    assert per_model == {"minilm-l6": 36, "mpnet-base": 18} and cfg.train.max_steps


def test_model_labels_tell_same_named_dirs_apart(tmp_path):
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert model_labels([str(a), str(b), "minilm-l6"]) == {str(a): "a/model", str(b): "b/model",
                                                          "minilm-l6": "minilm-l6"}


def test_coverage_word_level_tokenizer_splits_nothing():
    tokenizer = build_tokenizer(SAMPLE_TEXTS)
    stats = vocabulary_coverage(tokenizer, SAMPLE_TEXTS)
    assert stats["split_word_share"] == 0.0 and stats["subwords_per_word"] == 1.0
    assert stats["top_split"] == [] and stats["unk_token_share"] == 0.0
    unknown = vocabulary_coverage(tokenizer, ["zebra giraffe fire"])
    assert unknown["unk_token_share"] == pytest.approx(2 / 3)
    assert [word_kind(w) for w in ("#fire", "@bob", "https://t.co/x", "fire")] == [
        "hashtag", "mention", "url", "word"]


@pytest.mark.real
def test_coverage_minilm_splits_hashtags():
    from distilprune.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    raw = vocabulary_coverage(tokenizer, ["13,000 flee #wildfires in California", "#wildfires again"])
    assert raw["top_split"][0]["word"] == "#wildfires" and raw["top_split"][0]["count"] == 2
    assert raw["top_split"][0]["tokens"] == ["#", "wild", "##fires"]
    assert raw["by_kind"]["hashtag"]["split_share"] == 1.0
    assert 0.0 < raw["split_word_share"] < 1.0 and raw["unk_token_share"] == 0.0
    split_up = vocabulary_coverage(tokenizer, ["13,000 flee wild fires in California"])
    assert split_up["split_word_share"] == 0.0
