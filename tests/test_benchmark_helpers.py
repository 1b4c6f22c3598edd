"""The benchmark scripts' pure helpers: the recipes they build from their options, best-model
choice, target checks, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import graft_layers  # noqa: E402
import hidden_fidelity  # noqa: E402
import pretrain_scaling  # noqa: E402
import prune  # noqa: E402
import prune_seeds  # noqa: E402
import speed  # noqa: E402
import trials  # noqa: E402


def _finished(out: Path, steps: int, teacher: Path, seed: int, accuracy: float) -> None:
    """A finished fine-tune's ``distilprune.json``, as the prune benchmark's stages leave it."""
    out.mkdir(parents=True)
    (out / "distilprune.json").write_text(json.dumps({
        "config": {"train": {"max_steps": steps, "lr": 1e-4, "seed": seed}},
        "distillation": {"teacher": str(teacher), "alpha_cos": 0.0}, "metrics": {"accuracy": accuracy}}))


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


SPLIT = {"train": Path("/w/data/train.csv"), "val": Path("/w/data/val.csv")}


def test_the_qat_recipe_makes_one_finetune_and_export_per_qat_run(monkeypatch) -> None:
    import qat

    from distilprune.jobs.graph import job_config

    monkeypatch.setattr(sys, "argv", ["qat.py", "--qat", "a:5:2e-5:kd,freeze=0.5", "--qat", "b:7:1e-5",
                                      "--source", "/src", "--work", "/w", "--calibration", "100",
                                      "--parity-texts", "50"])
    args = qat.parse_args()
    recipe = qat.build_recipe(args, args.qat, SPLIT)
    assert list(recipe.stages) == ["fp32-onnx", "ptq-dynamic-onnx", "ptq-static-onnx", "qat-a",
                                   "qat-a-static-onnx", "qat-b", "qat-b-static-onnx"]
    tuned, kd = job_config(recipe.stages["qat-a"], Path("/w"))
    assert (tuned.model, tuned.qat.freeze_observers_at, tuned.train.max_steps, tuned.train.lr,
            tuned.train.eval_every) == ("/src", 0.5, 5, 2e-5, 5)
    assert Path(tuned.data.train) == common.DISASTER_TRAIN and tuned.data.val_fraction == 0.15
    assert kd["teacher"] == "/src" and (kd["loss"].alpha_soft, kd["loss"].alpha_hard) == (1.0, 0.0)
    assert job_config(recipe.stages["qat-b"], Path("/w"))[1] == {}  # labels only
    static = job_config(recipe.stages["ptq-static-onnx"], Path("/w"), {"fp32-onnx": "/w/fp32-onnx"})[0]
    assert (static.model, static.data, static.limit, static.parity_data, static.parity_limit) == (
        "/w/fp32-onnx", "/w/data/train.csv", 100, "/w/data/val.csv", 50)
    export = job_config(recipe.stages["qat-a-static-onnx"], Path("/w"), {"qat-a": "/w/qat-a"})[0]
    assert (export.model, export.quantization, export.data, export.limit, export.max_length) == (
        "/w/qat-a", "qat-static", "/w/data/val.csv", 50, 96)
    dynamic = job_config(recipe.stages["ptq-dynamic-onnx"], Path("/w"))[0]
    assert (dynamic.model, dynamic.int8, dynamic.quantization) == ("/src", True, None)


def test_the_speed_recipe_distils_from_the_sparse_models_teacher_and_adds_extra_rows(tmp_path,
                                                                                     monkeypatch) -> None:
    from distilprune.jobs.graph import job_config

    sparse = tmp_path / "prune" / "ofa"
    sparse.mkdir(parents=True)
    (sparse / "distilprune.json").write_text(json.dumps({"distillation": {
        "teacher": "/t", "temperature": 3.0, "alpha_soft": 0.7, "alpha_hard": 0.3}}))
    monkeypatch.setattr(sys, "argv", ["speed.py", "--work", "/w", "--qat-steps", "9", "--qat-eval-every", "3",
                                      "--shrink-heads", "0.5", "--shrink-steps", "11"])
    args = speed.parse_args()
    recipe = speed.build_recipe(args, {"sparse": sparse, "small": Path("/small")},
                                [tmp_path / "prune" / "x"], SPLIT)
    tuned, kd = job_config(recipe.stages["sparse-qat"], Path("/w"))
    assert (tuned.model, tuned.lock_sparsity, tuned.train.max_steps, tuned.train.eval_every) == (
        str(sparse), True, 9, 3)
    assert kd["teacher"] == "/t" and (kd["loss"].temperature, kd["loss"].alpha_soft) == (3.0, 0.7)
    assert job_config(recipe.stages["sparse-shrunk"], Path("/w"))[1]["teacher"] == "/t"
    shrink = job_config(recipe.stages["sparse-shrunk-raw"], Path("/w"))[0]
    assert (shrink.model, shrink.heads, shrink.neurons) == (str(sparse), 0.5, 0.5)
    small = job_config(recipe.stages["small-int8-onnx"], Path("/w"))[0]
    assert (small.model, small.int8, small.data) == ("/small", True, "/w/data/val.csv")
    extra = job_config(recipe.stages["prune-x-ptq-int8-onnx"], Path("/w"))[0]
    assert (extra.model, extra.int8, extra.data) == (str(tmp_path / "prune" / "x"), True, "/w/data/val.csv")
    assert recipe.stages["sparse-qat-compact"].sources == {"model": "sparse-qat"}
    assert set(speed.EXPORTS) | set(speed.SPARSE_INT8) <= set(recipe.stages)


def test_the_split_files_hold_the_splits_texts_in_order(tmp_path) -> None:
    from types import SimpleNamespace

    from distilprune.data.loading import load_table

    texts = ['fire, "downtown"', "line one\nline two", "  spaced  ", "ok"]
    data = SimpleNamespace(train=SimpleNamespace(texts=texts[:3], labels=[1, 0, 1]),
                           val=SimpleNamespace(texts=texts[3:], labels=[0]))
    paths = common.write_split(tmp_path, data)
    train = load_table(paths["train"], None, None)
    assert train.texts == texts[:3] and train.labels == [1, 0, 1]
    assert load_table(paths["val"], None, None).texts == ["ok"]


def _tasks_recipe(monkeypatch, *argv: str):
    import tasks

    monkeypatch.setattr(sys, "argv", ["tasks.py", "--work", "/w", *argv])
    args = tasks.parse_args()
    table = {name: tasks.Task(name, Path(f"/d/{name}-train"), Path(f"/d/{name}-val"), Path(f"/d/{name}-test"),
                              "accuracy", "tsv") for name in ("sst2", "qnli")}
    return tasks, tasks.build_recipe(args, table, Path("/d/corpus.txt"))


def test_the_tasks_recipe_gives_each_sparse_model_the_dense_budget_with_its_mask_locked(monkeypatch) -> None:
    from distilprune.jobs.graph import job_config

    tasks, recipe = _tasks_recipe(monkeypatch, "--steps-scale", "0.5", "--sparse-lr-scale", "3",
                                  "--threads", "1")
    dense = job_config(recipe.stages["qnli-dense"], Path("/w"))[0]
    assert (dense.model, dense.data.train, dense.data.validation) == (
        "minilm-l6", "/d/qnli-train", "/d/qnli-val")
    assert (dense.train.max_steps, dense.train.lr, dense.train.patience) == (210, 5e-5, None)
    sparse, kd = job_config(recipe.stages["qnli-sparse90"], Path("/w"), {"qnli-dense": "/w/qnli-dense"})
    assert sparse.model == str(tasks.SPARSE / "gd-block-0.90") and sparse.lock_sparsity
    assert (sparse.train.max_steps, sparse.train.lr, sparse.data.max_length) == (210, 1.5e-4, 128)
    assert kd["teacher"] == "/w/qnli-dense"
    bench = job_config(recipe.stages["qnli-sparse90-bench"], Path("/w"))[0]
    assert (bench.threads, bench.data, bench.limit, bench.batch_sizes) == (1, "/d/qnli-val", 64, [1, 8])
    assert recipe.stages["qnli-sparse90-bench"].sources == {
        "models": ["qnli-sparse90", "qnli-sparse90-onnx-int8", "qnli-sparse90-sparse-engine"]}
    engine = job_config(recipe.stages["qnli-sparse90-sparse-engine"], Path("/w"))[0]
    assert (engine.format, engine.int8, engine.data) == ("sparse", False, "/d/qnli-val")
    assert recipe.stages["qnli-sparse90-eval-engine"].sources == {"model": "qnli-sparse90-sparse-engine"}
    export = job_config(recipe.stages["qnli-sparse90-onnx-int8"], Path("/w"))[0]
    assert (export.int8, export.data, export.limit) == (True, "/d/qnli-val", 200)
    predict = recipe.stages["sst2-dense-predict-int8"]
    assert predict.sources == {"model": "sst2-dense-onnx-int8"} and predict.settings["data"] == "/d/sst2-test"
    assert "sparse80" not in recipe.stages  # prune.py's sparse models, not made here


def test_the_tasks_recipe_pre_trains_the_sparse_models_here_when_asked(monkeypatch) -> None:
    from distilprune.jobs.graph import job_config, with_upstream

    tasks, recipe = _tasks_recipe(monkeypatch, "--pretrain-steps", "7", "--pretrain", "train.lr=3e-4",
                                  "--pretrain", "prune.criterion=magnitude")
    for name, sparsity in (("sparse80", 0.8), ("sparse90", 0.9)):
        made = job_config(recipe.stages[name], Path("/w"), {"head": "/w/head"})[0]
        assert (made.train.max_steps, made.train.lr, made.prune.criterion, made.prune.final_sparsity) == (
            7, 3e-4, "magnitude", sparsity)
        assert made.corpus.files == ["/d/corpus.txt"] and made.teacher == "/w/head"
    assert job_config(recipe.stages["head"], Path("/w"))[0].teacher == "minilm-l6"
    assert with_upstream(recipe, ["qnli-sparse80-eval-int8"]) == [
        "head", "sparse80", "qnli-dense", "qnli-sparse80", "qnli-sparse80-onnx-int8",
        "qnli-sparse80-eval-int8"]
    source = tasks.sparse_source(tasks.parse_args(), recipe)
    assert source.startswith("80 % and 90 % unstructured sparsity (magnitude criterion), made here: 7 steps")
    assert "train.lr=3e-4" in source
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--pretrain", "train.resume=true"])
    assert tasks.sparse_source(tasks.parse_args(), recipe) == source  # resuming is the same pre-training


def test_a_tasks_table_grows_only_over_the_same_sparse_models(tmp_path) -> None:
    import tasks

    path = tmp_path / "tasks.json"
    assert tasks.previous_results(path, "here") == ([], {}, {}, {})
    earlier = {"rows": [{"task": "sst2"}], "budgets": {"sst2": "b"}, "sparse_models": "here", "command": "c"}
    path.write_text(json.dumps(earlier))
    assert tasks.previous_results(path, "here") == ([{"task": "sst2"}], {"sst2": "b"}, {"sst2": "c"}, earlier)
    assert tasks.previous_results(path, "elsewhere") == ([], {}, {}, {})


def test_a_task_whose_budget_changed_loses_its_earlier_rows_and_keeps_its_own_command() -> None:
    """A re-run at another budget (``--steps-scale 2``) must not leave the task's other models at the
    old one beside it; other tasks' rows stay, each task with the command that made it."""
    import tasks

    rows = [{"task": "sst2", "model": "dense"}, {"task": "qnli", "model": "dense"},
            {"task": "qnli", "model": "sparse90"}]
    budgets = {"sst2": "600 steps", "qnli": "420 steps"}
    assert tasks.keep_same_budget(rows, budgets, "qnli", "420 steps") == rows
    assert tasks.keep_same_budget(rows, budgets, "squad", "600 steps") == rows  # a new task
    assert tasks.keep_same_budget(rows, budgets, "qnli", "840 steps") == rows[:1]
    assert tasks.commands_section({"sst2": "a", "qnli": "a"}) == "Command: `a`"
    section = tasks.commands_section({"sst2": "a", "qnli": "b"})
    assert section.splitlines()[2:] == ["- sst2: `a`", "- qnli: `b`"]


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
    rows = {name: {"stage": name, "score": score, "metric": "accuracy"} for name, score in
            (("a", 0.8), ("a-sparse", 0.6), ("b", 0.5), ("b-sparse", 0.45), ("c", 0.7))}
    done = {r["stage"]: r for r in recipe_report.with_retention(recipe, rows | {"late": None}, ["a", "b"])}
    assert {n: (r["baseline"], r["retention"]) for n, r in done.items()} == {
        "a": ("a", 1.0), "a-sparse": ("a", pytest.approx(0.75)), "b": ("b", 1.0),
        "b-sparse": ("b", pytest.approx(0.9)), "c": ("-", None)}
    one = recipe_report.with_retention(recipe, rows, ["a"])  # one baseline: every stage's
    assert [r["retention"] for r in one] == pytest.approx([1.0, 0.75, 0.625, 0.5625, 0.875])
    rows["b-sparse"]["metric"] = "f1"  # a ratio of two metrics is refused, not printed
    with pytest.raises(SystemExit, match="b-sparse is scored on f1"):
        recipe_report.with_retention(recipe, rows, ["a"])


def test_recipe_report_keeps_every_repeated_baseline_flag() -> None:
    import recipe_report

    args = recipe_report.build_parser().parse_args(
        ["r.yaml", "--baseline", "a", "--baseline", "b", "c", "--name", "n"])
    assert args.baseline == ["a", "b", "c"]


def test_pretrain_scaling_fit_recovers_a_log_linear_curve_and_its_target_steps() -> None:
    import math

    points = [{"steps": s, "score": 0.5 + 0.03 * math.log2(s / 100)} for s in (100, 400, 1600)]
    fit = pretrain_scaling.fit(points, dense=0.8, target=0.95)
    assert fit["per_doubling"] == pytest.approx(0.03)
    assert fit["steps_for_target"] == round(100 * 2 ** ((0.76 - 0.5) / 0.03))  # 40,637
    assert pretrain_scaling.fit(points[:1], 0.8, 0.95) is None  # one budget: no curve
    flat = [{"steps": s, "score": 0.6} for s in (100, 400)]
    assert pretrain_scaling.fit(flat, 0.8, 0.95)["steps_for_target"] is None  # never reached
    assert fit["recent"]["per_doubling"] == pytest.approx(0.03)  # a straight line: the same slope
    flattening = [*points[:2], {"steps": 1600, "score": points[1]["score"] + 0.01}]
    recent = pretrain_scaling.fit(flattening, 0.8, 0.95)["recent"]
    assert recent["per_doubling"] == pytest.approx(0.005)  # +0.01 over 400 -> 1,600: two doublings
    assert recent["steps_for_target"] > fit["steps_for_target"]
    assert pretrain_scaling.fit(points[:2], 0.8, 0.95)["recent"] is None  # two budgets: one fit


def test_pretrain_scaling_reads_the_pretraining_stage_of_a_locked_fine_tune() -> None:
    recipe = {"stages": {
        "sp": {"kind": "distill_mlm", "train": {"max_steps": 1200},
               "prune": {"method": "unstructured", "criterion": "activation", "final_sparsity": 0.8}},
        "dense": {"kind": "finetune"}}}
    source = pretrain_scaling.pretraining
    assert source(recipe, "sp") == {"steps": 1200, "setting": "unstructured activation 80%"}
    assert source(recipe, "dense") is None and source(recipe, "x") is None


def test_pretrain_scaling_reads_a_tasks_table_at_its_pretraining_steps() -> None:
    """A ``tasks.py --pretrain-steps N`` result: its sparse rows of the task at N steps of
    recipes/tasks.yaml's setting; a run whose pre-training was set otherwise is refused."""
    from distilprune.errors import UserError

    command = "python benchmarks/tasks.py --pretrain-steps 4000 --tasks qnli --models sparse80 dense"
    rows = [{"task": "qnli", "model": m, "fp32": f} for m, f in (("sparse80", 0.78), ("dense", 0.8))]
    rows.append({"task": "sst2", "model": "sparse80", "fp32": 0.9})
    points, dense = pretrain_scaling.tasks_points("t", {"command": command, "rows": rows}, "qnli")
    assert dense == 0.8 and len(points) == 1
    assert points[0] | {"retention": 0} == {"trial": "t", "stage": "qnli-sparse80", "steps": 4000,
                                            "setting": "unstructured activation 80%", "score": 0.78,
                                            "retention": 0}
    assert points[0]["retention"] == pytest.approx(0.975)
    resumed = {"command": command + " --pretrain train.resume=true", "rows": rows}
    assert pretrain_scaling.tasks_points("t", resumed, "qnli")[0] == points  # how it ran: same point
    for other in (command + " --pretrain prune.criterion=magnitude",
                  command.replace(" --pretrain-steps 4000", "")):
        with pytest.raises(UserError, match="trials/t: "):
            pretrain_scaling.tasks_points("t", {"command": other, "rows": rows}, "qnli")


def test_the_trials_index_lists_every_committed_trial_with_its_headline() -> None:
    index = trials.table()  # what `python benchmarks/trials.py` writes; raised on an older tasks result
    for path in sorted(trials.TRIALS.glob("*.json")):
        row = next(line for line in index.splitlines() if line.startswith(f"| [{path.stem}]("))
        assert row.count(" | ") == 3 and "| - |" not in row, row  # a question, a headline, a command


def test_the_tasks_tables_keep_one_order_whatever_order_the_runs_came_in() -> None:
    import tasks

    rows = [{"task": t, "model": m} for t, m in (("squad", "sparse90"), ("qnli", "dense"), ("squad", "dense"),
                                                 ("sst2", "sparse80"))]
    assert [(r["task"], r["model"]) for r in tasks.in_table_order(rows)] == [
        ("sst2", "sparse80"), ("qnli", "dense"), ("squad", "dense"), ("squad", "sparse90")]


def test_hidden_fidelity_sees_what_the_cosine_misses() -> None:
    """One large coordinate keeps the cosine near 1 while every other coordinate is wrong: the
    per-coordinate R² shows it; identical states score perfectly, the teacher's mean scores 0."""
    import torch

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(500, 16, generator=g)
    teacher[:, 0] += 50.0
    perfect = hidden_fidelity.fidelity(teacher.clone(), teacher)
    assert perfect["cos_loss"] == pytest.approx(0, abs=1e-6)
    assert perfect["r2_pooled"] == pytest.approx(1) and perfect["r2_median_coordinate"] == pytest.approx(1)
    assert hidden_fidelity.fidelity(teacher.mean(0).expand_as(teacher), teacher)["r2_median_coordinate"] \
        == pytest.approx(0, abs=1e-5)
    noisy = teacher.clone()
    noisy[:, 1:] = torch.randn(500, 15, generator=g)  # every coordinate but the large one unrelated
    scores = hidden_fidelity.fidelity(noisy, teacher)
    assert scores["cos_loss"] < 0.02 and scores["r2_median_coordinate"] < -0.5
    assert scores["r2_linear_map"] < 0.1  # unrelated coordinates: no map recovers them
    rotated = (teacher - 3.0) @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0] * 0.1
    scores = hidden_fidelity.fidelity(rotated, teacher)  # nothing lost, only rotated and rescaled
    assert scores["r2_median_coordinate"] < 0.5 and scores["r2_linear_map"] == pytest.approx(1, abs=1e-3)


def test_graft_takes_the_named_layers_from_the_donor_and_refuses_a_mismatch() -> None:
    import torch

    from distilprune.errors import UserError

    base = {f"bert.encoder.layer.{i}.output.dense.weight": torch.zeros(2, 2) for i in range(3)}
    base["bert.embeddings.word_embeddings.weight"] = torch.zeros(4, 2)
    donor = {name: torch.ones_like(t) for name, t in base.items()}
    out = graft_layers.grafted(base, donor, [2])
    assert {n for n, t in out.items() if bool(t.any())} == {"bert.encoder.layer.2.output.dense.weight"}
    with pytest.raises(UserError, match="no weights of layers"):
        graft_layers.grafted(base, donor, [7])
    donor["bert.encoder.layer.1.output.dense.weight"] = torch.ones(3, 2)
    with pytest.raises(UserError, match="shape"):
        graft_layers.grafted(base, donor, [1])
