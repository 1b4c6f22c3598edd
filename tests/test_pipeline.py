"""``distilprune run``: the whole Prune-OFA pipeline from one recipe, on tiny random models.

Stages, outputs and the model card; resuming (everything skipped, nothing rewritten); a
changed QAT section re-running only QAT and what follows; forced re-runs cascading; recipe
errors naming the bad key.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from distilprune.config import from_dict
from distilprune.errors import UserError
from distilprune.jobs.pipeline import STAGES, PipelineConfig, load_recipe, run_pipeline

PNG = b"\x89PNG\r\n\x1a\n"
PRUNABLE = re.compile(r"(^|\.)layers?\.\d+\.")
UPSTREAM_OF_QAT = ("teacher", "mlm_head", "student", "distill", "finetune")
DOWNSTREAM_OF_QAT = ("qat", "export", "benchmark", "report")


def tiny_train(steps: int = 3, lr: float = 1e-3) -> dict:
    return {"max_steps": steps, "batch_size": 8, "lr": lr, "patience": None, "eval_every": steps,
            "log_every": 1, "warmup_ratio": 0.0}


def tiny_recipe(out: Path, model: Path, csv: Path, prune: dict) -> dict:
    """A recipe with budgets of a few steps per stage, the tiny CSV as data and corpus."""
    return {
        "out": str(out),
        "threads": 1,
        "data": {"train": str(csv), "max_length": 32, "val_fraction": 0.25},
        "teacher": {"model": str(model), "train": tiny_train(3)},
        "student": {"layers": 2},
        "mlm_head": {"steps": 2, "batch_size": 8},
        "distill": {"corpus": {"files": [str(csv)], "max_length": 32, "heldout": 4},
                    "train": tiny_train(4), "prune": {**prune, "end_fraction": 0.5, "frequency": 1}},
        "finetune": {"train": tiny_train(3), "task_distillation": True},
        "qat": {"steps": 2, "lr": 1e-4},
        "export": {"parity_texts": 8},
        "benchmark": {"models": ["teacher", "baseline", "compressed"], "repeats": 2, "warmup": 1,
                      "batch_sizes": [1], "limit": 8},
    }


def config(recipe: dict) -> PipelineConfig:
    cfg = from_dict(PipelineConfig, copy.deepcopy(recipe), "recipe")
    cfg.validate()
    return cfg


def snapshot(root: Path) -> dict[str, int]:
    """Modification time (ns) of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def stage_json(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "stage.json").read_text())


def encoder_sparsity(model_dir: Path) -> float:
    """Zero fraction of the transformer-layer weight matrices of a saved model."""
    tensors = load_file(model_dir / "model.safetensors")
    weights = [v for k, v in tensors.items()
               if PRUNABLE.search(k) and v.ndim == 2 and not re.search("norm|embed", k, re.I)]
    assert weights
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def check_outputs(out: Path, final: str, stages: tuple[str, ...] = STAGES) -> None:
    """Every stage directory with its stage.json, the exports and the model card."""
    for stage in stages:
        assert (out / stage / "stage.json").is_file(), stage
    assert (out / "export" / "onnx-int8" / "model.onnx").is_file()
    assert json.loads((out / "export" / "onnx-int8" / "export.json").read_text())["int8"] is True
    assert (out / final / "model.safetensors").is_file()
    md, page = (out / "report" / "report.md").read_text(), (out / "report" / "report.html").read_text()
    for section in ("## Data", "## Preprocessing", "## Accuracy, sparsity and size by stage",
                    "## Sparsity", "## Latency (CPU benchmark)", "## Figures", "## Recipe"):
        assert section in md, section
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/distill-sparsity.png" in links and "figures/benchmark-benchmark.png" in links
    assert "figures/teacher-loss.png" in links and "figures/final-confusion_matrix.png" in links
    assert all((out / "report" / link).read_bytes()[:8] == PNG for link in links)
    assert page.count('src="data:image/png;base64,') == len(links)
    assert 'src="figures' not in page and "<style>" in page and "<table>" in page
    assert "| teacher (fine-tuned) |" in md


# ----------------------------------------------------------------------------- end to end
def test_pipeline_runs_resumes_and_reruns_downstream_only(tiny_model_factory, tiny_csv, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("DISTILPRUNE_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    recipe = tiny_recipe(out, tiny_model_factory("bert", 4), tiny_csv,
                         {"method": "block", "block_size": 4, "final_sparsity": 0.5})

    first = run_pipeline(config(recipe))
    assert first.status == dict.fromkeys(STAGES, "ran")
    check_outputs(out, "qat")
    assert "masked_accuracy" in first.records["mlm_head"]["summary"]  # tiny bert has no MLM head: fitted
    assert stage_json(out, "student")["summary"]["student_layers"] == 2
    # the final (QAT) student keeps the Prune-OFA sparsity, in 1x4 blocks
    qat = first.records["qat"]["summary"]
    assert qat["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert encoder_sparsity(out / "qat") == pytest.approx(0.5, abs=0.03)
    sparsity = json.loads((out / "distill" / "sparsity.json").read_text())
    assert all(t["block_size"] >= 4 for t in sparsity["tensors"])
    assert first.records["finetune"]["summary"]["distillation"]["teacher"] == str(out / "teacher")
    bench = first.records["benchmark"]["summary"]["models"]
    assert [m["kind"] for m in bench] == ["torch", "tfidf-logreg", "onnx-int8"]
    assert all("accuracy" in m for m in bench)
    md = (out / "report" / "report.md").read_text()
    assert md.count("| baseline: TF-IDF + logistic regression (`tfidf-logreg`) |") == 2  # accuracy + latency
    assert "the TF-IDF + logistic-regression baseline" in md.split("## Data")[0]  # in the headline
    assert first.records["export"]["summary"]["compact"]["sparsity"] > 0.2

    # a second run finds every stage up to date and touches no file
    before = snapshot(out)
    second = run_pipeline(config(recipe))
    assert second.status == dict.fromkeys(STAGES, "skipped")
    assert snapshot(out) == before

    # a changed QAT section re-runs QAT and what follows, nothing upstream
    recipe["qat"]["lr"] = 5e-4
    third = run_pipeline(config(recipe))
    assert third.status == {**dict.fromkeys(UPSTREAM_OF_QAT, "skipped"),
                            **dict.fromkeys(DOWNSTREAM_OF_QAT, "ran")}
    after = snapshot(out)
    upstream = [k for k in before if k.split("/")[0] in UPSTREAM_OF_QAT]
    assert upstream and all(after[k] == before[k] for k in upstream)
    assert stage_json(out, "qat")["run_id"] != first.records["qat"]["run_id"]
    assert "lr: 0.0005" in (out / "report" / "report.md").read_text()


def test_pipeline_mpnet_pass_through_stages_and_forced_cascade(tiny_model_factory, tiny_csv,
                                                               tmp_path, monkeypatch):
    """Another architecture, unstructured pruning, no task distillation, QAT disabled."""
    monkeypatch.setenv("DISTILPRUNE_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    recipe = tiny_recipe(out, tiny_model_factory("mpnet", 4), tiny_csv,
                         {"method": "unstructured", "final_sparsity": 0.5})
    recipe["finetune"]["task_distillation"] = False
    recipe["qat"] = {"enabled": False}
    recipe["export"]["compact"] = False

    first = run_pipeline(config(recipe))
    ran = tuple(s for s in STAGES if s != "qat")  # QAT disabled: the export reads the fine-tune
    assert first.status == dict.fromkeys(ran, "ran")
    check_outputs(out, "finetune", ran)
    assert not (out / "qat").exists()
    assert "distillation" not in first.records["finetune"]["summary"]
    assert encoder_sparsity(out / "finetune") == pytest.approx(0.5, abs=0.03)
    assert first.records["export"]["summary"]["onnx"]["source"] == str(out / "finetune")

    # forcing one stage re-runs it; downstream stages consumed the old output and follow
    forced = run_pipeline(config(recipe), stages="export", force=True)
    assert forced.status["export"] == "ran"
    assert {s for s, v in forced.status.items() if v == "not selected"} == set(ran) - {"export"}
    resumed = run_pipeline(config(recipe))
    assert [s for s, v in resumed.status.items() if v == "ran"] == ["benchmark", "report"]
    with pytest.raises(UserError, match="^stage 'qat' is not part of this recipe: qat.enabled is false$"):
        run_pipeline(config(recipe), stages="qat")


def test_the_pipeline_is_a_stage_graph_of_the_stages_it_needs(tiny_csv, tmp_path):
    """Each stage is a graph kind wired by from:; without an MLM head to fit, the student and the
    distillation read the teacher model itself; without task distillation, nothing reads the
    fine-tuned teacher but the benchmark."""
    from distilprune.jobs.pipeline import pipeline_graph

    recipe = {"out": str(tmp_path / "run"), "teacher": {"model": "some-teacher"},
              "data": {"train": str(tiny_csv)}, "mlm_head": {"enabled": False},
              "finetune": {"task_distillation": False}}
    graph = pipeline_graph(config(recipe))
    assert {n: s.kind for n, s in graph.stages.items()} == {
        "teacher": "finetune", "student": "student", "distill": "distill_mlm", "finetune": "finetune",
        "qat": "finetune", "export": "pipeline_export", "benchmark": "pipeline_benchmark",
        "report": "pipeline_report"}
    assert {n: s.sources for n, s in graph.stages.items()} == {
        "teacher": {}, "student": {}, "distill": {"student": "student"}, "finetune": {"model": "distill"},
        "qat": {"model": "finetune"}, "export": {"model": "qat"},
        "benchmark": {"teacher": "teacher", "student": "qat", "compressed": "export"},
        "report": {"stages": ["teacher", "student", "distill", "finetune", "qat", "export", "benchmark"]}}
    assert graph.stages["student"].settings["teacher"] == "some-teacher"
    assert graph.stages["distill"].settings["teacher"] == "some-teacher"
    assert graph.stages["qat"].settings["lock_sparsity"] and graph.stages["qat"].settings["qat"] is not None
    assert "loss" not in graph.stages["finetune"].settings  # no task distillation, no loss weights


# ----------------------------------------------------------------------------- recipe and stage errors
@pytest.mark.parametrize(("fragment", "where", "name"), [
    ({"qat": {"enabeld": True}}, "recipe.qat", "enabeld"),
    ({"distill": {"prune": {"blocksize": 4}}}, "recipe.distill.prune", "blocksize"),
    ({"benchmarks": {"threads": 1}}, "recipe", "benchmarks"),
])
def test_unknown_recipe_key_names_it(fragment, where, name, tiny_csv, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "minilm-l6"},
                                    "data": {"train": str(tiny_csv)}, **fragment}))
    with pytest.raises(UserError, match=rf"^{re.escape(where)}: unknown key '{name}'"):
        load_recipe(path)


def test_recipe_types_defaults_and_stage_selection(tiny_csv, tmp_path):
    path = tmp_path / "my-recipe.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "minilm-l6"}, "data": {"train": str(tiny_csv)},
                                    "qat": {"steps": "many"}}))
    with pytest.raises(UserError, match=r"recipe\.qat\.steps: expected int"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"teacher": {"model": "minilm-l6"}, "data": {"train": str(tiny_csv)},
                                    "qat": {"steps": 10, "freeze_observers_at": 0.5}}))
    cfg = load_recipe(path)
    assert cfg.out == str(Path("runs") / "my-recipe")
    assert cfg.qat.quant_config().freeze_observers_at == 0.5 and cfg.distill.prune is not None
    path.write_text(yaml.safe_dump({"data": {"train": str(tiny_csv)}}))
    with pytest.raises(UserError, match="teacher.model"):
        load_recipe(path)

    cfg.out = str(tmp_path / "run")
    with pytest.raises(UserError, match="unknown stage 'qta'"):
        run_pipeline(cfg, stages="qta")
    with pytest.raises(UserError, match="stage 'qat' needs the output of 'finetune'"):
        run_pipeline(cfg, stages="qat,export")
    assert not (tmp_path / "run").exists()


def test_data_change_invalidates_everything_downstream_of_it(tiny_csv, tmp_path):
    """Hashes chain: the data digest reaches every data-dependent stage, not the corpus ones."""
    from distilprune.jobs.pipeline import stage_hashes

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some unlabelled text for the corpus here\n" * 20)
    recipe = {"out": str(tmp_path / "run"), "teacher": {"model": "minilm-l6"},
              "data": {"train": str(tiny_csv)}, "distill": {"corpus": {"files": [str(corpus)]}}}
    before = stage_hashes(config(recipe))
    with tiny_csv.open("a") as handle:
        handle.write("99,,,an extra labelled row,1\n")
    after = stage_hashes(config(recipe))
    changed = {s for s in STAGES if before[s] != after[s]}
    assert changed == {"teacher", "finetune", "qat", "export", "benchmark", "report"}
    recipe["finetune"] = {"task_distillation": False}
    assert stage_hashes(config(recipe))["student"] == after["student"]


@pytest.mark.parametrize(("kind", "preprocess", "max_length"),
                         [("disaster-tweets", ["keyword", "html"], 64), ("imdb", [], 128)])
def test_demo_runs_the_packaged_recipe_on_the_demo_data(kind, preprocess, max_length, tiny_csv, tmp_path):
    from distilprune.jobs.demo import demo_config, demo_recipe

    repo_recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    assert yaml.safe_load(repo_recipe.read_text()) == demo_recipe()  # one recipe, two names
    cfg = demo_config(tmp_path / "demo", tiny_csv, kind, threads=1)
    assert (cfg.out, cfg.data.train, cfg.distill.corpus.files) == (
        str(tmp_path / "demo"), str(tiny_csv), [str(tiny_csv)])
    assert (cfg.data.preprocess[:2], cfg.data.max_length) == (preprocess, max_length)
    assert cfg.threads == cfg.benchmark.threads == 1
    assert cfg.teacher.model == "minilm-l6" and cfg.distill.prune is not None and cfg.qat.enabled


def test_demo_cli_runs_the_pipeline_and_prints_the_benchmark(tiny_model_factory, tiny_csv, tmp_path,
                                                             monkeypatch):
    from typer.testing import CliRunner

    import distilprune.jobs.demo as demo
    from distilprune.cli import app

    recipe = tiny_recipe(tmp_path / "unused", tiny_model_factory("bert"), tiny_csv,
                         {"method": "unstructured", "final_sparsity": 0.5})
    monkeypatch.setattr(demo, "demo_recipe", lambda: recipe)
    monkeypatch.setattr(demo, "demo_dataset", lambda cache: (tiny_csv, "imdb"))
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "demo" / "benchmark" / "benchmark.md").read_text()
    assert table.strip() in result.output and (tmp_path / "demo" / "report" / "report.md").is_file()
    assert stage_json(tmp_path / "demo", "distill")["summary"]["sparsity"] > 0.3
