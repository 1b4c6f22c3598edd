"""``distilprune run`` on a stage-graph recipe (``stages:`` wired by ``from:``), on tiny models:
each stage is its command's recipe section; reruns skip, changes cascade, bad recipes fail in
one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from distilprune.errors import UserError
from distilprune.jobs.graph import load_graph, parse_graph, plan, run_graph, without_later_defaults

TRAIN = {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "patience": None, "log_every": 1, "warmup_ratio": 0.0}


def graph(out: Path, model: Path, csv: Path) -> dict:
    """fit an MLM head -> prune while distilling -> a mask-locked fine-tune task-distilled from a
    dense fine-tune: every kind, and a stage fed by two upstream stages."""
    corpus = {"files": [str(csv)], "max_length": 32, "heldout": 4}
    data = {"train": str(csv), "max_length": 32, "val_fraction": 0.25}
    recipe =  {"out": str(out), "threads": 1, "stages": {
        "head": {"kind": "fit_mlm_head", "teacher": str(model), "corpus": corpus, "train": TRAIN},
        "sparse": {"kind": "distill_mlm", "from": {"teacher": "head"}, "student_layers": 2, "corpus": corpus,
                   "train": TRAIN, "prune": {"method": "block", "final_sparsity": 0.5, "end_fraction": 0.5,
                                             "frequency": 1}},
        "dense": {"kind": "finetune", "model": str(model), "data": data, "train": TRAIN},
        "locked": {"kind": "finetune", "from": {"model": "sparse", "teacher": "dense"}, "data": data,
                   "train": TRAIN, "lock_sparsity": True, "loss": {"alpha_soft": 1.0, "alpha_hard": 0.0}},
    }}
    return json.loads(json.dumps(recipe))  # every stage its own copies of the shared parts


def stage_record(out: Path, name: str) -> dict:
    return json.loads((out / name / "stage.json").read_text())


def test_stages_run_in_order_skip_when_done_and_rerun_what_changed(tmp_path, tiny_model_factory, tiny_csv):
    out = tmp_path / "run"
    recipe = graph(out, tiny_model_factory("bert", 2), tiny_csv)
    result = run_graph(parse_graph(recipe, "unused"))
    assert result.status == dict.fromkeys(("head", "sparse", "dense", "locked"), "ran")
    locked = json.loads((out / "locked" / "distilprune.json").read_text())
    assert locked["sparsity"] == pytest.approx(0.5, abs=0.02)  # the distilled model's mask kept
    assert locked["distillation"]["teacher"] == str(out / "dense")
    first = {name: stage_record(out, name)["run_id"] for name in result.status}

    again = run_graph(parse_graph(recipe, "unused"))
    assert set(again.status.values()) == {"skipped"}
    assert {name: stage_record(out, name)["run_id"] for name in first} == first

    recipe["stages"]["dense"]["train"] = {**TRAIN, "lr": 5e-4}  # dense changes: locked (its student) too
    changed = run_graph(parse_graph(recipe, "unused"))
    assert changed.status == {"head": "skipped", "sparse": "skipped", "dense": "ran", "locked": "ran"}


def test_the_cli_runs_a_graph_recipe_and_a_subset_of_its_stages(tmp_path, tiny_model_factory, tiny_csv,
                                                                monkeypatch, capfd):
    out = tmp_path / "run"
    recipe = graph(out, tiny_model_factory("bert", 2), tiny_csv)
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code, stdout, stderr = run_cli(monkeypatch, capfd, "run", path, "--stages", "dense")
    assert code == 0, stderr
    assert "dense" in stdout and "ran" in stdout
    assert (out / "dense" / "stage.json").is_file() and not (out / "head").exists()
    code, _, stderr = run_cli(monkeypatch, capfd, "run", path, "--stages", "locked")  # upstream not made
    assert code == 2 and "needs the output of 'sparse'" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli(monkeypatch, capfd, "run", path, "--stages", "dense",
                              "--set", "stages.dense.train.max_steps=1")
    assert code == 0, stderr
    assert stage_record(out, "dense")["inputs"]["config"]["train"]["max_steps"] == 1


def test_a_stage_hash_follows_its_input_files_not_how_their_paths_are_spelt(tmp_path, tiny_csv):
    def hashes(csv: Path) -> dict[str, str]:
        recipe = graph(tmp_path / "run", tmp_path / "model", csv)  # corpus and data files
        recipe["stages"] |= deploy_graph(tmp_path / "run", tmp_path / "model", csv)["stages"]  # data file
        return {name: stage.hash for name, stage in plan(parse_graph(recipe, "unused")).items()}

    (tmp_path / "linked").symlink_to(tiny_csv.parent, target_is_directory=True)
    direct = hashes(tiny_csv)
    assert hashes(tmp_path / "linked" / tiny_csv.name) == direct  # through a symlink: the same stages
    assert hashes(tiny_csv.parent / ".." / tiny_csv.parent.name / tiny_csv.name) == direct
    changed = tmp_path / "changed.csv"
    changed.write_text(tiny_csv.read_text() + tiny_csv.read_text().splitlines()[-1] + "\n")
    assert set(hashes(changed).values()).isdisjoint(direct.values())  # other contents: every stage


def test_settings_added_later_leave_the_hash_of_older_stages_alone_until_used(tmp_path, tiny_csv):
    """``distill_mlm`` gained ``lock_sparsity`` and ``loss.alpha_mse``: at their old-behaviour values
    they are not in the stage inputs (the stages made before them keep their hash, and so do the
    stages after them); set, they are, and the stage and everything downstream change."""
    recipe = graph(tmp_path / "run", tmp_path / "model", tiny_csv)
    before = plan(parse_graph(recipe, "unused"))
    config = before["sparse"].inputs["config"]
    assert "lock_sparsity" not in config and "alpha_mse" not in config["loss"]
    assert "alpha_cos" in config["loss"]
    assert before["locked"].inputs["config"]["lock_sparsity"] is True  # other kinds keep theirs
    assert "lock_sparsity" in before["dense"].inputs["config"]
    recipe["stages"]["sparse"]["loss"] = {"alpha_mse": 1.0}
    after = plan(parse_graph(recipe, "unused"))
    assert after["sparse"].inputs["config"]["loss"]["alpha_mse"] == 1.0
    assert after["sparse"].hash != before["sparse"].hash and after["locked"].hash != before["locked"].hash
    assert after["dense"].hash == before["dense"].hash


def test_without_later_defaults_drops_only_the_old_behaviour_values() -> None:
    config = {"lock_sparsity": False, "loss": {"alpha_mse": 0.0, "alpha_cos": 1.0}, "prune": None}
    assert without_later_defaults("distill_mlm", config) == {"loss": {"alpha_cos": 1.0}, "prune": None}
    assert config["loss"]["alpha_mse"] == 0.0  # the caller's copy untouched
    kept = {"lock_sparsity": True, "loss": {"alpha_mse": 0.5}}
    assert without_later_defaults("distill_mlm", kept) == kept
    assert without_later_defaults("finetune", config) == config


def deploy_graph(out: Path, model: Path, csv: Path) -> dict:
    """fine-tune -> int8 ONNX export -> evaluate it, predict with it -> benchmark both (a list of
    stages)."""
    data = {"train": str(csv), "max_length": 32, "val_fraction": 0.25}
    return {"out": str(out), "threads": 1, "stages": {
        "dense": {"kind": "finetune", "model": str(model), "data": data, "train": TRAIN},
        "int8": {"kind": "export", "from": {"model": "dense"}, "int8": True, "data": str(csv), "limit": 8,
                 "max_length": 32},
        "score": {"kind": "evaluate", "from": {"model": "int8"}, "data": str(csv)},
        "labels": {"kind": "predict", "from": {"model": "int8"}, "data": str(csv)},
        "speed": {"kind": "benchmark", "from": {"models": ["dense", "int8"]}, "data": str(csv), "limit": 8,
                  "batch_sizes": [1], "repeats": 1, "warmup": 0, "max_length": 32},
    }}


def test_export_evaluate_and_benchmark_stages_run_as_their_commands(tmp_path, tiny_model_factory, tiny_csv):
    from distilprune.jobs.inference import evaluate_model, predict_file

    out = tmp_path / "run"
    recipe = deploy_graph(out, tiny_model_factory("bert", 2), tiny_csv)
    result = run_graph(parse_graph(recipe, "unused"))
    assert result.status == dict.fromkeys(("dense", "int8", "score", "labels", "speed"), "ran")
    assert (out / "int8" / "model.onnx").is_file()
    assert json.loads((out / "int8" / "distilprune.json").read_text())["label_names"]  # metadata kept
    direct = evaluate_model(out / "int8", tiny_csv, tmp_path / "direct")
    scored = stage_record(out, "score")["summary"]
    assert scored["accuracy"] == direct["accuracy"] and scored["f1"] == direct["f1"]
    predict_file(out / "int8", tiny_csv, tmp_path / "direct.csv")
    assert (out / "labels" / "predictions.csv").read_text() == (tmp_path / "direct.csv").read_text()
    timed = json.loads((out / "speed" / "benchmark.json").read_text())["models"]
    assert [m["name"] for m in timed] == ["dense", "int8"]
    assert stage_record(out, "speed")["inputs"]["config"]["models"] == [
        f"stage:{stage_record(out, name)['hash']}" for name in ("dense", "int8")]

    recipe["stages"]["int8"]["limit"] = 6  # the export changes: what reads it re-runs, dense does not
    changed = run_graph(parse_graph(recipe, "unused"))
    assert changed.status == {"dense": "skipped",
                              **dict.fromkeys(("int8", "score", "labels", "speed"), "ran")}


def test_a_quantize_stage_calibrates_a_static_int8_copy_of_an_export(tmp_path, tiny_model_factory, tiny_csv):
    out = tmp_path / "run"
    recipe = {"out": str(out), "threads": 1, "stages": {
        "fp32": {"kind": "export", "model": str(tiny_model_factory("bert", 2)), "data": str(tiny_csv),
                 "limit": 8, "max_length": 32},
        "static": {"kind": "quantize", "from": {"model": "fp32"}, "data": str(tiny_csv), "limit": 6,
                   "parity_data": str(tiny_csv), "parity_limit": 4, "max_length": 32},
    }}
    assert run_graph(parse_graph(recipe, "unused")).status == {"fp32": "ran", "static": "ran"}
    parity = json.loads((out / "static" / "parity.json").read_text())
    assert parity["reference"] == "fp32 ONNX" and parity["n_texts"] == 4  # the parity texts, not calibration
    meta = json.loads((out / "static" / "export.json").read_text())
    assert meta["int8"] and meta["quantization"]["calibration_texts"] == 6
    assert stage_record(out, "static")["summary"]["message"].startswith("static int8:")

    recipe["stages"]["static"]["limit"] = 5  # other calibration texts: the export is reused
    assert run_graph(parse_graph(recipe, "unused")).status == {"fp32": "skipped", "static": "ran"}
    assert json.loads((out / "static" / "export.json").read_text())["quantization"]["calibration_texts"] == 5


def test_a_student_stage_feeds_general_distillation_as_distill_mlm_student(tmp_path, tiny_model_factory,
                                                                           tiny_csv):
    """``student`` (every other teacher layer) -> ``distill_mlm`` from that student: the student
    holds the teacher's layers 0 and 2, the distillation starts from it, and a changed depth
    re-runs both."""
    from safetensors.torch import load_file

    teacher, out = tiny_model_factory("bert", 4), tmp_path / "run"
    corpus = {"files": [str(tiny_csv)], "max_length": 32, "heldout": 4}
    recipe = {"out": str(out), "threads": 1, "stages": {
        "head": {"kind": "fit_mlm_head", "teacher": str(teacher), "corpus": corpus, "train": TRAIN},
        "init": {"kind": "student", "from": {"teacher": "head"}, "layers": 2},
        "general": {"kind": "distill_mlm", "from": {"teacher": "head", "student": "init"},
                    "corpus": corpus, "train": TRAIN},
    }}
    first = run_graph(parse_graph(json.loads(json.dumps(recipe)), "unused"))
    assert first.status == dict.fromkeys(("head", "init", "general"), "ran")
    init = json.loads((out / "init" / "distilprune.json").read_text())
    assert (init["teacher_layers"], init["student_layers"]) == (4, 2)
    source, student = (load_file(out / name / "model.safetensors") for name in ("head", "init"))
    layer = "encoder.layer.{}.attention.self.query.weight"
    for s_index, t_index in ((0, 0), (1, 2)):
        s_key = next(k for k in student if k.endswith(layer.format(s_index)))
        t_key = next(k for k in source if k.endswith(layer.format(t_index)))
        assert torch.equal(student[s_key], source[t_key])
    general = json.loads((out / "general" / "distilprune.json").read_text())
    assert general["config"]["student"] == str(out / "init")

    recipe["stages"]["init"]["layers"] = 1
    again = run_graph(parse_graph(json.loads(json.dumps(recipe)), "unused"))
    assert again.status == {"head": "skipped", "init": "ran", "general": "ran"}
    assert json.loads((out / "init" / "distilprune.json").read_text())["student_layers"] == 1


def test_a_shrink_stage_removes_heads_and_neurons_and_feeds_a_recovery_fine_tune(tmp_path, tiny_model_factory,
                                                                                 tiny_csv):
    """fine-tune -> ``shrink`` (as ``distilprune shrink``) -> recovery fine-tune; ``with_upstream``
    selects a stage with what it reads; a changed share re-runs the shrink and the recovery only."""
    from distilprune.jobs.graph import with_upstream

    out, data = tmp_path / "run", {"train": str(tiny_csv), "max_length": 32, "val_fraction": 0.25}
    model = str(tiny_model_factory("bert", 2))
    recipe = {"out": str(out), "threads": 1, "stages": {
        "dense": {"kind": "finetune", "model": model, "data": data, "train": TRAIN},
        "other": {"kind": "finetune", "from": {"model": "dense"}, "data": data, "train": TRAIN},
        "shrunk": {"kind": "shrink", "from": {"model": "dense"}, "heads": 0.5, "neurons": 0.5},
        "recovered": {"kind": "finetune", "from": {"model": "shrunk"}, "data": data, "train": TRAIN},
    }}
    parsed = parse_graph(json.loads(json.dumps(recipe)), "unused")
    assert with_upstream(parsed, ["recovered"]) == ["dense", "shrunk", "recovered"]
    first = run_graph(parsed, with_upstream(parsed, ["recovered"]))
    assert first.status == {"dense": "ran", "other": "not selected", "shrunk": "ran", "recovered": "ran"}
    shrink = json.loads((out / "shrunk" / "distilprune.json").read_text())["shrink"]
    assert shrink["params_after"] < shrink["params_before"]
    assert stage_record(out, "shrunk")["summary"]["params_after"] == shrink["params_after"]
    recipe["stages"]["shrunk"]["neurons"] = 0.25
    again = run_graph(parse_graph(json.loads(json.dumps(recipe)), "unused"), ["dense", "shrunk", "recovered"])
    assert again.status == {"dense": "skipped", "other": "not selected", "shrunk": "ran", "recovered": "ran"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r["stages"]["speed"]["from"].update(models=["dense", "nowhere"]), "no stage named 'nowhere'"),
    (lambda r: r["stages"]["speed"]["from"].update(models=[]), "speed.from: expected a mapping"),
    (lambda r: r["stages"]["int8"].update(format="tflite"), "unknown export format 'tflite'"),
    (lambda r: r["stages"]["score"].update(overwrite=False), "stages.score.overwrite: set by the run"),
    (lambda r: r["stages"]["speed"].update(batch_sizes="1,8"), "stages.speed.batch_sizes"),
])
def test_a_bad_deploy_stage_fails_in_one_line(edit, message, tmp_path, tiny_csv):
    recipe = deploy_graph(tmp_path / "run", tmp_path / "model", tiny_csv)
    edit(recipe)
    with pytest.raises(UserError, match=message):
        run_graph(parse_graph(recipe, "unused"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(steps={}), "unknown top-level key 'steps'"),
    (lambda r: r["stages"]["dense"].update(kind="prune"), "stages.dense.kind: expected one of"),
    (lambda r: r["stages"]["dense"].update(epochz=3), "stages.dense: unknown key 'epochz'"),
    (lambda r: r["stages"]["dense"]["train"].update(lr="fast"), "stages.dense.train.lr"),
    (lambda r: r["stages"]["dense"].update(out="elsewhere"), "stages.dense.out: set by the run"),
    (lambda r: r["stages"]["locked"]["from"].update(model="nowhere"), "no stage named 'nowhere'"),
    (lambda r: r["stages"]["sparse"]["from"].update(teacher="locked"), "must come before 'sparse'"),
    (lambda r: r["stages"]["dense"].update(loss={"alpha_soft": 1.0}), "task distillation needs a teacher"),
    (lambda r: r.update(stages={}), "stages: expected a mapping"),
    (lambda r: r["stages"].update(init={"kind": "student", "layers": 1}), "student needs --model"),
])
def test_a_bad_graph_recipe_fails_in_one_line_before_any_work(edit, message, tmp_path, tiny_csv):
    recipe = graph(tmp_path / "run", tmp_path / "model", tiny_csv)
    edit(recipe)
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_graph(path)
    assert not (tmp_path / "run").exists()
