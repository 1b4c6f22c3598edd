"""The benchmark scripts' pure helpers: stage reuse checks, best-model choice, target checks."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import prune  # noqa: E402
import prune_seeds  # noqa: E402
import speed  # noqa: E402


def _summary(steps: int, teacher: Path, seed: int = 42, accuracy: float = 0.8) -> dict:
    return {"config": {"train": {"max_steps": steps, "lr": 1e-4, "seed": seed}},
            "distillation": {"teacher": str(teacher), "alpha_cos": 0.0}, "metrics": {"accuracy": accuracy}}


def _finished(out: Path, steps: int, teacher: Path | None, seed: int = 42, accuracy: float = 0.8) -> Path:
    """A stage staged as the benchmarks do (its run writes ``distilprune.json``)."""

    def run() -> dict:
        out.mkdir(parents=True)
        summary = _summary(steps, teacher or out, seed, accuracy)
        (out / "distilprune.json").write_text(json.dumps(summary))
        return summary

    common.staged(out, run, prune.expected(steps, 1e-4, teacher=teacher, seed=seed))
    return out


def test_staged_reuses_a_matching_stage_even_through_a_link(tmp_path: Path) -> None:
    teacher = tmp_path / "a" / "dense"
    teacher.mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dense").symlink_to(teacher)
    stage = _finished(tmp_path / "b" / "ofa", 1015, teacher)
    expect = prune.expected(1015, 1e-4, teacher=tmp_path / "b" / "dense")
    summary = common.staged(stage, lambda: pytest.fail("a finished stage must not rerun"), expect)
    assert summary["config"]["train"]["max_steps"] == 1015


def test_staged_refuses_a_stage_made_with_another_budget(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "ofa", 609, None)
    with pytest.raises(SystemExit, match="max_steps=609, now 1015"):
        common.staged(stage, lambda: {}, prune.expected(1015, 1e-4))


def test_staged_refuses_a_distilled_stage_for_a_labels_only_run(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "ofa", 1015, tmp_path / "dense")
    with pytest.raises(SystemExit, match="distillation.teacher=.*dense', now None"):
        common.staged(stage, lambda: {}, prune.expected(1015, 1e-4))


def test_staged_refuses_a_stage_fine_tuned_with_another_seed(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "dense", 609, None, seed=1)
    with pytest.raises(SystemExit, match="seed=1, now 2"):
        common.staged(stage, lambda: {}, prune.expected(609, 1e-4, seed=2))


def test_staged_reruns_an_output_that_never_finished(tmp_path: Path) -> None:
    (tmp_path / "ofa").mkdir()  # an interrupted run: no stage record
    assert common.staged(tmp_path / "ofa", lambda: {"ran": True}, prune.expected(1, 1e-4)) == {"ran": True}


def test_seed_summary_reports_mean_spread_and_retention_of_means(tmp_path: Path) -> None:
    runs = []
    for seed, (dense, sparse) in {42: (0.84, 0.82), 1: (0.82, 0.83)}.items():
        run = tmp_path / f"seed{seed}"
        _finished(run / "dense", 609, tmp_path, seed, dense)
        _finished(run / "ofa-unstructured-0.85", 1015, tmp_path, seed, sparse)
        runs.append(run)
    rows = prune_seeds.summarise(runs, ["dense", "ofa-unstructured-0.85"])
    assert rows[1]["sparsity"] == 0.85 and rows[1]["seeds"] == [42, 1]
    assert rows[0]["mean"] == pytest.approx(0.83) and rows[1]["mean"] == pytest.approx(0.825)
    assert rows[1]["std"] == pytest.approx(0.00707, abs=1e-5)
    (check,) = prune_seeds.checks(rows)
    assert check["retention"] == pytest.approx(0.825 / 0.83) and check["met"]  # 99.4% >= 99%
    with pytest.raises(SystemExit, match="share a seed"):
        prune_seeds.summarise([runs[0], runs[0]], ["dense"])


def test_staged_runs_a_missing_stage(tmp_path: Path) -> None:
    assert common.staged(tmp_path / "new", lambda: {"ran": True}, prune.expected(1, 1e-4)) == {"ran": True}


def _row(name: str, accuracy: float, b8_ms: float, size: int = 10) -> dict:
    return {"name": name, "accuracy": accuracy, "size_bytes": size,
            "latency": {"1": {"p50_ms": b8_ms / 8}, "8": {"p50_ms": b8_ms}}}


def test_best_compressed_keeps_accuracy_then_speed_within_the_candidates() -> None:
    rows = [_row("teacher", 0.85, 1000, 400), _row("dense-int8", 0.85, 50),
            _row("sparse-a", 0.80, 40), _row("sparse-b", 0.84, 90)]
    assert speed.best_compressed(rows)["name"] == "dense-int8"
    best = speed.best_compressed(rows, rows[2:])
    assert best["name"] == "sparse-b" and best["meets_targets"]
    # nothing keeps 98%: the most accurate candidate is reported, with the targets missed
    best = speed.best_compressed(rows, rows[2:3])
    assert best["name"] == "sparse-a" and not best["meets_targets"] and not best["kept_accuracy"]
    assert "none keeps 98%" in speed.best_line(best, "Best sparse")


def test_int8_candidates_are_matched_by_model_path_even_when_names_collide() -> None:
    from distilprune.benchmark.speed import model_names

    models = ["/w/teacher", "/w/a/ofa-0.50", "/w/s/a-ofa-0.50/ofa-0.50-int8", "/w/b/ofa-0.50",
              "/w/s/b-ofa-0.50/ofa-0.50-int8"]
    names = model_names(models)
    assert len(set(names)) == len(names) and "ofa-0.50-int8" not in names  # lengthened to stay unique
    rows = [{"name": n} for n in names]
    row_of = speed.rows_by_spec(models, rows)
    picked = [row_of[spec] for spec in models if spec in {models[2], models[4]}]
    assert [r["name"] for r in picked] == [names[2], names[4]]


def test_target_checks_pick_the_best_row_per_sparsity() -> None:
    rows = [{"variant": "dense", "method": "-", "target_sparsity": 0.0, "accuracy": 0.8, "retention": 1.0}]
    for variant, acc in (("(a)", 0.79), ("(b)", 0.78)):
        for sparsity in (0.85, 0.9):
            rows.append({"variant": variant, "method": "unstructured", "target_sparsity": sparsity,
                         "accuracy": acc, "retention": acc / 0.8})
    checks = {c["sparsity"]: c for c in prune.target_checks(rows)}
    # (a) retains 0.79 / 0.8 = 98.75%: below the 99% target at 85%, above the 98.5% one at 90%
    assert checks[0.85]["best"].startswith("(a)") and not checks[0.85]["met"]
    assert checks[0.9]["met"]


def test_cells_take_any_sparsity_and_reject_bad_ones() -> None:
    assert prune.cells(["unstructured:0.5", "block:0.90", "unstructured:0.70"]) == [
        ("block", 0.9), ("unstructured", 0.7), ("unstructured", 0.5)]
    assert len(prune.cells(None)) == len(prune.METHODS) * len(prune.SPARSITIES)
    for bad in ("movement:0.9", "unstructured:1.0", "unstructured:x"):
        with pytest.raises(SystemExit, match="METHOD:SPARSITY"):
            prune.cells([bad])


def test_budget_overrides_the_sparse_pretraining_soft_weight(tmp_path: Path) -> None:
    base_loss = prune.DistillLoss(alpha_ce=5.0, alpha_mlm=0.0)
    budget = prune.Budget(out=tmp_path, gd_steps=1, ft_steps=1, gd_lr=1e-4, ft_lr=1e-4, gd_cos_layers="all",
                          task_cos=0.0)
    assert budget.gd_loss(base_loss).alpha_ce == 5.0 and budget.dense_ft_lr == 1e-4
    tuned = prune.Budget(out=tmp_path, gd_steps=1, ft_steps=1, gd_lr=1e-4, ft_lr=2e-4, gd_cos_layers="all",
                         task_cos=0.0, dense_lr=1e-4, gd_alpha_ce=0.0)
    loss = tuned.gd_loss(base_loss)
    assert (loss.alpha_ce, loss.cos_layers, tuned.dense_ft_lr) == (0.0, "all", 1e-4)


def test_downstream_refuses_a_stage_distilled_without_the_asked_hidden_cosine(tmp_path: Path) -> None:
    _finished(tmp_path / "ofa", 1015, tmp_path / "dense")  # distilled with alpha_cos 0.0
    budget = prune.Budget(out=tmp_path, gd_steps=1, ft_steps=1015, gd_lr=1e-4, ft_lr=1e-4,
                          gd_cos_layers="last", task_cos=1.0)
    with pytest.raises(SystemExit, match="alpha_cos=0.0, now 1.0"):
        prune.downstream(budget, "ofa", tmp_path / "gd", lock=True)
    summary = prune.downstream(dataclasses.replace(budget, task_cos=0.0), "ofa", tmp_path / "gd", lock=True)
    assert summary["distillation"]["alpha_cos"] == 0.0


def test_a_task_command_staged_in_one_work_folder_is_reused_through_a_linked_one(tmp_path: Path,
                                                                              monkeypatch) -> None:
    """tasks.py trials link the dense stages of the main work folder into their own: the command
    names the linked path, and matches the record because paths are compared resolved."""
    import tasks

    ran = []
    monkeypatch.setattr(tasks, "cli", lambda *args, log: (ran.append(args), Path(args[-1]).mkdir()))
    main, trial = tmp_path / "main", tmp_path / "trial"
    data = main / "data" / "train.tsv"
    data.parent.mkdir(parents=True)
    data.write_text("x")
    tasks.once(main / "dense", "finetune", "--data", data, "--out", main / "dense", log=tmp_path / "log")
    trial.mkdir()
    (trial / "data").symlink_to(main / "data")
    (trial / "dense").symlink_to(main / "dense")
    tasks.once(trial / "dense", "finetune", "--data", trial / "data" / "train.tsv", "--out", trial / "dense",
               log=tmp_path / "log")
    assert len(ran) == 1
    with pytest.raises(SystemExit, match="other inputs"):
        tasks.once(trial / "dense", "finetune", "--data", data, "--out", trial / "dense", "--lr", "1",
                   log=tmp_path / "log")


def test_the_benchmark_recipes_parse_and_their_finetunes_run_on_the_shared_split() -> None:
    """Every recipe in benchmarks/recipes/ is valid; the fine-tuning and distillation benchmarks'
    runs use the split and the tweet preprocessing the baseline beside them uses (one drifting
    would compare unlike runs)."""
    import distill
    import finetune

    from distilprune.config import load_yaml
    from distilprune.jobs.graph import is_graph_recipe, load_graph

    recipes = sorted((common.ROOT / "benchmarks" / "recipes").glob("*.yaml"))
    graphs = [load_graph(path) for path in recipes if is_graph_recipe(load_yaml(path))]
    assert len(graphs) >= 4
    recipe = load_graph(finetune.RECIPE)
    runs = [name for name, spec in recipe.stages.items() if spec.kind == "finetune"]
    common.check_split(recipe, runs, lambda name: name.endswith("-pre"))
    recipe.stages[runs[-1]].settings["data"]["preprocess"] = ["keyword"]
    with pytest.raises(SystemExit, match=f"stage {runs[-1]} is not on the shared split"):
        common.check_split(recipe, runs, lambda name: name.endswith("-pre"))
    students = load_graph(distill.RECIPE)
    assert [n for n, s in students.stages.items() if s.kind == "finetune"] == list(distill.STUDENTS)
    common.check_split(students, list(distill.STUDENTS), lambda name: False)


def test_recipe_report_tables_the_finetunes_against_a_baseline(tmp_path, monkeypatch, tiny_model_factory,
                                                               tiny_csv) -> None:
    """recipe_report.py runs a stage graph and writes each fine-tune's score and its ratio to the
    baseline stage, read from the stages' own summaries; an unknown baseline is refused."""
    import recipe_report
    import yaml

    train = {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "patience": None, "warmup_ratio": 0.0}
    data = {"train": str(tiny_csv), "max_length": 32, "val_fraction": 0.25}
    recipe = {"out": str(tmp_path / "run"), "threads": 1, "stages": {
        "dense": {"kind": "finetune", "model": str(tiny_model_factory("bert", 2)), "data": data,
                  "train": train},
        "distilled": {"kind": "finetune", "from": {"model": "dense", "teacher": "dense"}, "data": data,
                      "train": {**train, "lr": 5e-4}}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["recipe_report.py", str(path), "--baseline", "nowhere", "--name", "t"])
    with pytest.raises(SystemExit, match="no stage named 'nowhere'"):
        recipe_report.main()
    monkeypatch.setattr(sys, "argv", ["recipe_report.py", str(path), "--baseline", "dense", "--name", "t",
                                      "--run"])
    recipe_report.main()
    rows = {r["stage"]: r for r in json.loads((tmp_path / "results" / "t.json").read_text())["rows"]}
    scores = {n: json.loads((tmp_path / "run" / n / "distilprune.json").read_text())["metrics"]["accuracy"]
              for n in ("dense", "distilled")}
    assert {n: r["score"] for n, r in rows.items()} == scores
    assert rows["dense"]["retention"] == 1.0
    assert rows["distilled"]["retention"] == pytest.approx(scores["distilled"] / scores["dense"])
    distilled = rows["distilled"]
    assert (distilled["teacher"], distilled["lr"], distilled["steps"]) == ("dense", 5e-4, 2)
