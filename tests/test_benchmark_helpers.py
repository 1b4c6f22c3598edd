"""The benchmark scripts' pure helpers: stage reuse checks, best-model choice, target checks."""

from __future__ import annotations

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


def _expect(steps: int, lr: float, teacher: Path | None = None, seed: int = 42) -> dict:
    """What a reused stage must have been made with, as the benchmarks ask ``common.staged``."""
    return {"config.train.max_steps": steps, "config.train.lr": lr, "config.train.seed": seed,
            "distillation.teacher": teacher}


def _finished(out: Path, steps: int, teacher: Path | None, seed: int = 42, accuracy: float = 0.8) -> Path:
    """A stage staged as the benchmarks do (its run writes ``distilprune.json``)."""

    def run() -> dict:
        out.mkdir(parents=True)
        summary = _summary(steps, teacher or out, seed, accuracy)
        (out / "distilprune.json").write_text(json.dumps(summary))
        return summary

    common.staged(out, run, _expect(steps, 1e-4, teacher=teacher, seed=seed))
    return out


def test_staged_reuses_a_matching_stage_even_through_a_link(tmp_path: Path) -> None:
    teacher = tmp_path / "a" / "dense"
    teacher.mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dense").symlink_to(teacher)
    stage = _finished(tmp_path / "b" / "ofa", 1015, teacher)
    expect = _expect(1015, 1e-4, teacher=tmp_path / "b" / "dense")
    summary = common.staged(stage, lambda: pytest.fail("a finished stage must not rerun"), expect)
    assert summary["config"]["train"]["max_steps"] == 1015


def test_staged_refuses_a_stage_made_with_another_budget(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "ofa", 609, None)
    with pytest.raises(SystemExit, match="max_steps=609, now 1015"):
        common.staged(stage, lambda: {}, _expect(1015, 1e-4))


def test_staged_refuses_a_distilled_stage_for_a_labels_only_run(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "ofa", 1015, tmp_path / "dense")
    with pytest.raises(SystemExit, match="distillation.teacher=.*dense', now None"):
        common.staged(stage, lambda: {}, _expect(1015, 1e-4))


def test_staged_refuses_a_stage_fine_tuned_with_another_seed(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "dense", 609, None, seed=1)
    with pytest.raises(SystemExit, match="seed=1, now 2"):
        common.staged(stage, lambda: {}, _expect(609, 1e-4, seed=2))


def test_staged_reruns_an_output_that_never_finished(tmp_path: Path) -> None:
    (tmp_path / "ofa").mkdir()  # an interrupted run: no stage record
    assert common.staged(tmp_path / "ofa", lambda: {"ran": True}, _expect(1, 1e-4)) == {"ran": True}


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
    assert common.staged(tmp_path / "new", lambda: {"ran": True}, _expect(1, 1e-4)) == {"ran": True}


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


def _prune_recipe(monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["prune.py", "--work", "/w", *argv])
    args = prune.parse_args()
    return args, prune.build_recipe(args)


def test_the_prune_recipe_takes_the_budget_options_and_cells_off_its_matrix(monkeypatch) -> None:
    from distilprune.jobs.graph import job_config, with_upstream

    args, recipe = _prune_recipe(monkeypatch, "--only", "unstructured:0.50", "--gd-alpha-ce", "0",
                                 "--gd-steps", "800", "--ft-lr", "2e-4", "--dense-lr", "1e-4",
                                 "--task-cos", "1.0", "--seed", "2")
    gd = job_config(recipe.stages["gd-unstructured-0.50"], Path("/w"))[0]
    assert (gd.prune.method, gd.prune.final_sparsity, gd.loss.alpha_ce, gd.train.max_steps) == (
        "unstructured", 0.5, 0.0, 800)
    ofa, extra = job_config(recipe.stages["ofa-unstructured-0.50"], Path("/w"),
                            {"gd-unstructured-0.50": "/w/gd", "dense": "/w/dense"})
    assert ofa.lock_sparsity and ofa.model == "/w/gd" and extra["teacher"] == "/w/dense"
    assert (ofa.train.lr, ofa.train.seed, extra["loss"].alpha_cos) == (2e-4, 2, 1.0)
    dense = job_config(recipe.stages["dense"], Path("/w"))[0]
    assert dense.train.lr == 1e-4 and Path(dense.data.train).is_absolute()  # from any working directory
    assert prune.reported_stages(args) == ["dense", "ofa-unstructured-0.50", "gmp-unstructured-0.50"]
    assert with_upstream(recipe, ["ofa-unstructured-0.50"]) == [
        "minilm-l6-mlm", "dense", "gd-unstructured-0.50", "ofa-unstructured-0.50"]


def test_the_prune_recipe_fine_tunes_on_labels_or_from_a_teacher_made_elsewhere(monkeypatch) -> None:
    from distilprune.jobs.graph import job_config

    recipe = _prune_recipe(monkeypatch, "--no-task-kd")[1]
    ofa, extra = job_config(recipe.stages["ofa-block-0.90"], Path("/w"), {"gd-block-0.90": "/w/gd"})
    assert ofa.lock_sparsity and extra == {}
    assert recipe.stages["ofa-block-0.90"].upstream() == ("gd-block-0.90",)
    recipe = _prune_recipe(monkeypatch, "--kd-teacher", "/elsewhere/dense")[1]
    gmp, extra = job_config(recipe.stages["gmp-block-0.90"], Path("/w"))
    assert extra["teacher"] == "/elsewhere/dense" and gmp.prune.final_sparsity == 0.9
    assert recipe.stages["gmp-block-0.90"].upstream() == ()


def test_prune_refuses_to_remake_a_stage_linked_from_another_work_directory(tmp_path: Path,
                                                                             monkeypatch) -> None:
    if not common.DISASTER_TRAIN.is_file():
        pytest.skip("the prune benchmark's stages hash ../shared/data")
    other = tmp_path / "other" / "dense"
    other.mkdir(parents=True)
    (other / "stage.json").write_text(json.dumps({"hash": "made-with-another-budget"}))
    work = tmp_path / "work"
    work.mkdir()
    (work / "dense").symlink_to(other)
    monkeypatch.setattr(sys, "argv", ["prune.py", "--work", str(work)])
    recipe = prune.build_recipe(prune.parse_args())
    with pytest.raises(SystemExit, match="linked from another work directory"):
        prune.refuse_linked_stale(recipe, ["dense"])
    prune.refuse_linked_stale(recipe, ["minilm-l6-mlm"])  # not linked: the engine may remake it


def test_the_structured_recipe_follows_the_asked_shares(monkeypatch) -> None:
    import structured

    from distilprune.jobs.graph import job_config

    monkeypatch.setattr(sys, "argv", ["structured.py", "--work", "/w", "--heads", "0.5", "--neurons", "0.25",
                                      "--task-kd"])
    recipe, tag = structured.build_recipe(structured.parse_args())
    assert tag == "h0.50-n0.25" and list(recipe.stages) == [
        "minilm-l6-mlm", "dense", f"gd-structured-{tag}", f"ofa-structured-{tag}", f"shrunk-{tag}",
        f"posthoc-structured-{tag}"]
    gd = job_config(recipe.stages[f"gd-structured-{tag}"], Path("/w"))[0]
    shrink = job_config(recipe.stages[f"shrunk-{tag}"], Path("/w"))[0]
    assert (gd.prune.heads, gd.prune.neurons, shrink.heads, shrink.neurons) == (0.5, 0.25, 0.5, 0.25)
    posthoc = recipe.stages[f"posthoc-structured-{tag}"]
    assert posthoc.sources == {"model": f"shrunk-{tag}", "teacher": "dense"}


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


@pytest.mark.parametrize("script", ["finetune.py", "distill.py", "recipe_report.py"])
def test_a_benchmark_script_refuses_an_unknown_recipe_key_in_one_line(script: str) -> None:
    import subprocess

    if script != "recipe_report.py" and not common.DISASTER_TRAIN.is_file():
        pytest.skip("the fine-tuning and distillation benchmarks need ../shared/data")
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    args = ["--set", "stages.no-such-stage.train.lr=1e-4"]
    if script == "recipe_report.py":
        args = [str(bench / "recipes" / "finetune.yaml"), "--baseline", "x", "--name", "x", *args]
    result = subprocess.run([sys.executable, str(bench / script), *args], capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "no-such-stage" in result.stderr, result.stderr


def test_recipe_report_takes_each_stages_retention_of_the_baseline_on_its_validation_file() -> None:
    import recipe_report

    from distilprune.jobs.graph import parse_graph

    def stage(validation: str, source: str | None = None) -> dict:
        data = {"train": "t.tsv", "validation": validation}
        body = {"kind": "finetune", "model": "minilm-l6", "data": data}
        return body | ({"from": {"model": source}} if source else {})

    recipe = parse_graph({"stages": {"a": stage("a.tsv"), "a-sparse": stage("a.tsv", "a"),
                                     "b": stage("b.tsv"), "b-sparse": stage("b.tsv", "b"),
                                     "c": stage("c.tsv")}}, "out")
    rows = {name: {"stage": name, "score": score} for name, score in
            (("a", 0.8), ("a-sparse", 0.6), ("b", 0.5), ("b-sparse", 0.45), ("c", 0.7))}
    done = {r["stage"]: r for r in recipe_report.with_retention(recipe, rows | {"late": None}, ["a", "b"])}
    assert {n: (r["baseline"], r["retention"]) for n, r in done.items()} == {
        "a": ("a", 1.0), "a-sparse": ("a", pytest.approx(0.75)), "b": ("b", 1.0),
        "b-sparse": ("b", pytest.approx(0.9)), "c": ("-", None)}
    one = recipe_report.with_retention(recipe, rows, ["a"])  # one baseline: every stage's
    assert [r["retention"] for r in one] == pytest.approx([1.0, 0.75, 0.625, 0.5625, 0.875])
