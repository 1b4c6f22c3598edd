"""Issue #20: sequence-pair / multi-class classification, token classification (NER) and extractive
QA through the whole pipeline (finetune, evaluate, predict, --lock-sparsity, task distillation,
ONNX export with parity, serve) on tiny random models of each architecture."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, SAMPLE_TEXTS, assert_user_error, run_cli, write
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from distilprune.io import read_json
from distilprune.serve import create_app

FAST = ["--max-steps", "2", "--batch-size", "4"]

# ----------------------------------------------------------------------------- tiny data
NER = [
    ("Forest fire near La Ronge Sask . Canada", "O O O B-location I-location B-location O B-location"),
    ("13 , 000 people receive wildfires evacuation orders in California", "O O O O O O O O O B-location"),
    ("I love fruits", "O O O"),
    (
        "All residents asked to shelter in place are being notified by officers .",
        "O B-group O O O O O O O O O B-group O",
    ),
    ("Earthquake hits the city , buildings collapsed and people injured", "O O O O O O O O B-group O"),
    ("What a wonderful day to go to the beach in Canada", "O O O O O O O O O O B-location"),
]
CONTEXTS = [
    (
        "Fires",
        f"{SAMPLE_TEXTS[0]}. {SAMPLE_TEXTS[2]}. {SAMPLE_TEXTS[1]}",
        [
            ("Where is the forest fire?", "La Ronge Sask. Canada"),
            ("Who receive evacuation orders?", "13,000 people"),
        ],
    ),
    (
        "Summer",
        f"{SAMPLE_TEXTS[3]}. {SAMPLE_TEXTS[4]}. {SAMPLE_TEXTS[5]}",
        [("What is lovely?", "the summer"), ("What is on fire?", "My car")],
    ),
]
PAIRS = [
    ("Where is the fire?", SAMPLE_TEXTS[0], "entailment"),
    ("Where is the fire?", SAMPLE_TEXTS[3], "not_entailment"),
    ("Who is notified?", SAMPLE_TEXTS[1], "entailment"),
    ("Who is notified?", SAMPLE_TEXTS[4], "not_entailment"),
    ("What is fast?", SAMPLE_TEXTS[5], "entailment"),
    ("What is fast?", SAMPLE_TEXTS[6], "not_entailment"),
]


def conll(path: Path, rows=NER, repeat: int = 1, tags: bool = True) -> Path:
    blocks = [
        "\n".join(f"{w}\t{t}" if tags else w for w, t in zip(s.split(), g.split(), strict=True))
        for s, g in rows * repeat
    ]
    return write(path, "\n\n".join(blocks) + "\n")


def squad(path: Path, answers: bool = True) -> Path:
    data = []
    for a, (title, context, questions) in enumerate(CONTEXTS):
        qas = [
            {
                "id": f"q{a}{i}",
                "question": q,
                "answers": [{"text": ans, "answer_start": context.index(ans)}] if answers else [],
            }
            for i, (q, ans) in enumerate(questions)
        ]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    return write(path, json.dumps({"version": "1.1", "data": data}))


def pair_tsv(path: Path, labels: bool = True, repeat: int = 3) -> Path:
    head = "index\tquestion\tsentence" + ("\tlabel" if labels else "")
    rows = [f"{i}\t{q}\t{s}" + (f"\t{y}" if labels else "") for i, (q, s, y) in enumerate(PAIRS * repeat)]
    return write(path, "\n".join([head, *rows]) + "\n")


def cli_ok(monkeypatch, capfd, *args) -> str:
    code, out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 0, err
    return out


def encoder(src: Path, out: Path, sparsity: float = 0.0) -> Path:
    """The encoder of a tiny classifier without its head (optionally magnitude-pruned per tensor)."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(src)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if sparsity and param.ndim == 2 and ".layer." in name:
                k = int(sparsity * param.numel())
                cut = param.abs().flatten().kthvalue(k).values
                param[param.abs() <= cut] = 0.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task-data")
    return {
        "ner_train": conll(root / "train.conll", repeat=3),
        "ner_dev": conll(root / "dev.conll"),
        "tokens": conll(root / "test.tokens", tags=False),
        "squad": squad(root / "train.json"),
        "squad_test": squad(root / "test.json", answers=False),
        "pairs": pair_tsv(root / "train.tsv"),
        "pairs_test": pair_tsv(root / "test.tsv", labels=False, repeat=1),
    }


def _finetune(monkeypatch, capfd, model: Path, data: Path, out: Path, *extra) -> Path:
    cli_ok(monkeypatch, capfd, "finetune", "--model", model, "--data", data, "--out", out, *FAST, *extra)
    return out


QA_ARGS = ("--max-length", "24", "--doc-stride", "8", "--max-answer-length", "8")


@pytest.fixture(scope="module")
def ner_model(tiny_model_factory, files, tmp_path_factory) -> Path:
    from distilprune.jobs.common import DataConfig
    from distilprune.jobs.finetune import FinetuneConfig, finetune
    from distilprune.train import TrainConfig

    out = tmp_path_factory.mktemp("ner") / "model"
    finetune(
        FinetuneConfig(
            model=str(tiny_model_factory("bert", 2)),
            out=str(out),
            data=DataConfig(train=str(files["ner_train"]), validation=str(files["ner_dev"]), max_length=32),
            train=TrainConfig(max_steps=6, batch_size=4, lr=5e-3),
        )
    )
    return out


@pytest.fixture(scope="module")
def typed_bert(tiny_model_factory, tmp_path_factory) -> Path:
    """The tiny BERT with a tokenizer that makes token type ids (as real BERT tokenizers do)."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("typed") / "bert"
    shutil.copytree(tiny_model_factory("bert", 2), out)
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("model_input_names", None)  # the class's own names, as a saved BERT tokenizer has
    write(out / "tokenizer_config.json", json.dumps({**config, "tokenizer_class": "BertTokenizer"}))
    assert "token_type_ids" in AutoTokenizer.from_pretrained(out).model_input_names
    return out


@pytest.fixture(scope="module")
def qa_model(typed_bert, files, tmp_path_factory) -> Path:
    from distilprune.jobs.common import DataConfig
    from distilprune.jobs.finetune import FinetuneConfig, finetune
    from distilprune.train import TrainConfig

    out = tmp_path_factory.mktemp("qa") / "model"
    finetune(
        FinetuneConfig(
            model=str(typed_bert),
            out=str(out),
            data=DataConfig(
                train=str(files["squad"]),
                validation=str(files["squad"]),
                max_length=24,
                doc_stride=8,
                max_answer_length=8,
            ),
            train=TrainConfig(max_steps=6, batch_size=4, lr=5e-3),
        )
    )
    return out


# ----------------------------------------------------------------------------- the task in one place
def test_task_of_data_and_model(files, ner_model, qa_model, tiny_model_factory):
    from distilprune.task import task_of_data, task_of_model

    assert task_of_data(files["ner_train"]) == task_of_data(files["tokens"]) == "token-classification"
    assert task_of_data(files["squad"]) == "question-answering"
    assert task_of_data(files["pairs"]) == "classification"
    assert task_of_data(files["pairs"], "ner") == "token-classification"
    assert (
        task_of_model(ner_model) == "token-classification" and task_of_model(qa_model) == "question-answering"
    )
    assert task_of_model(tiny_model_factory("bert", 2)) == "classification"
    config = read_json(ner_model / "config.json")
    assert config["architectures"] == ["BertForTokenClassification"]
    assert read_json(qa_model / "config.json")["architectures"] == ["BertForQuestionAnswering"]
    assert list(config["id2label"].values()) == ["O", "B-group", "B-location", "I-group", "I-location"]
    assert read_json(ner_model / "distilprune.json")["task"] == "token-classification"


# ----------------------------------------------------------------------------- classification
def test_pairs_with_string_labels_keep_their_names_end_to_end(
    monkeypatch, capfd, tmp_path, files, typed_bert
):
    run = _finetune(
        monkeypatch,
        capfd,
        typed_bert,
        files["pairs"],
        tmp_path / "m",
        "--max-length",
        "32",
    )
    names = ["entailment", "not_entailment"]
    assert list(read_json(run / "config.json")["id2label"].values()) == names
    meta = read_json(run / "distilprune.json")
    assert meta["text_pairs"] and meta["text_columns"] == ["question", "sentence"]
    cli_ok(
        monkeypatch,
        capfd,
        "predict",
        "--model",
        run,
        "--data",
        files["pairs_test"],
        "--out",
        tmp_path / "p.tsv",
    )
    rows = (tmp_path / "p.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 7
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(6)]
    assert {r.split("\t")[1] for r in rows[1:]} <= set(names)
    out = cli_ok(
        monkeypatch,
        capfd,
        "predict",
        "--model",
        run,
        "--text",
        "Where is the fire?",
        "--text-pair",
        SAMPLE_TEXTS[0],
    )
    assert json.loads(out)["label"] in names
    cli_ok(monkeypatch, capfd, "evaluate", "--model", run, "--data", files["pairs"], "--out", tmp_path / "ev")
    assert read_json(tmp_path / "ev" / "metrics.json")["labels"] == names
    # the ONNX export answers with the same names and predictions, token types included
    cli_ok(
        monkeypatch,
        capfd,
        "export",
        "--model",
        run,
        "--out",
        tmp_path / "onnx",
        "--data",
        files["pairs"],
        "--max-length",
        "32",
    )
    cli_ok(
        monkeypatch,
        capfd,
        "predict",
        "--model",
        tmp_path / "onnx",
        "--data",
        files["pairs_test"],
        "--out",
        tmp_path / "q.tsv",
    )
    assert (tmp_path / "q.tsv").read_text() == (tmp_path / "p.tsv").read_text()
    client = TestClient(create_app(tmp_path / "onnx"))
    answer = client.post("/predict", json={"texts": [["Where is the fire?", SAMPLE_TEXTS[0]]]})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in names
    assert client.post("/predict", json={"texts": ["one text"]}).status_code == 422


def test_multi_class_string_labels(monkeypatch, capfd, tmp_path, tiny_model_factory):
    rows = "".join(f'{i},"{SAMPLE_TEXTS[i % 8]}",{("neg", "neu", "pos")[i % 3]}\n' for i in range(30))
    data = write(tmp_path / "three.csv", "id,text,label\n" + rows)
    base = encoder(tiny_model_factory("roberta", 2), tmp_path / "enc")
    run = _finetune(monkeypatch, capfd, base, data, tmp_path / "m", "--max-length", "32")
    assert list(read_json(run / "config.json")["id2label"].values()) == ["neg", "neu", "pos"]
    metrics = read_json(run / "metrics.json")
    assert np.asarray(metrics["confusion_matrix"]).shape == (3, 3)
    cli_ok(monkeypatch, capfd, "predict", "--model", run, "--data", data, "--out", tmp_path / "p.csv")
    with (tmp_path / "p.csv").open() as handle:
        assert {r["target"] for r in csv.DictReader(handle)} <= {"neg", "neu", "pos"}


# ----------------------------------------------------------------------------- NER and QA, every architecture
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ner_finetune_evaluate_predict(arch, monkeypatch, capfd, tmp_path, files, tiny_model_factory):
    run = _finetune(
        monkeypatch,
        capfd,
        tiny_model_factory(arch, 2),
        files["ner_train"],
        tmp_path / "m",
        "--validation",
        files["ner_dev"],
        "--max-length",
        "32",
    )
    assert read_json(run / "config.json")["architectures"][0].endswith("ForTokenClassification")
    assert set(read_json(run / "metrics.json")) >= {"precision", "recall", "f1", "per_type"}
    out = cli_ok(
        monkeypatch, capfd, "evaluate", "--model", run, "--data", files["ner_dev"], "--out", tmp_path / "e"
    )
    assert "entities per type" in out and (tmp_path / "e" / "entities.md").read_text().startswith("| type |")
    cli_ok(
        monkeypatch,
        capfd,
        "predict",
        "--model",
        run,
        "--data",
        files["tokens"],
        "--out",
        tmp_path / "p.conll",
    )
    predicted = (tmp_path / "p.conll").read_text().splitlines()
    given = files["tokens"].read_text().splitlines()
    assert len(predicted) >= len(given)
    for line, token in zip(predicted, given, strict=False):  # aligned line by line, blank lines kept
        assert (line == token == "") or line.split("\t")[0] == token


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_qa_finetune_evaluate_predict(arch, monkeypatch, capfd, tmp_path, files, tiny_model_factory):
    run = _finetune(
        monkeypatch,
        capfd,
        tiny_model_factory(arch, 2),
        files["squad"],
        tmp_path / "m",
        "--validation",
        files["squad"],
        *QA_ARGS,
    )
    assert "ForQuestionAnswering" in read_json(run / "config.json")["architectures"][0]
    cli_ok(monkeypatch, capfd, "evaluate", "--model", run, "--data", files["squad"], "--out", tmp_path / "e")
    metrics = read_json(tmp_path / "e" / "metrics.json")
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 100 and metrics["count"] == 4
    cli_ok(
        monkeypatch,
        capfd,
        "predict",
        "--model",
        run,
        "--data",
        files["squad_test"],
        "--out",
        tmp_path / "p.json",
    )
    answers = read_json(tmp_path / "p.json")
    assert sorted(answers) == ["q00", "q01", "q10", "q11"]
    contexts = {f"q{a}{i}": c for a, (_, c, qs) in enumerate(CONTEXTS) for i in range(len(qs))}
    assert all(text in contexts[qid] for qid, text in answers.items())


# ----------------------------------------------------------------------------- export, parity, serve
@pytest.mark.parametrize("which", ["ner", "qa"])
def test_export_parity_and_serve(which, monkeypatch, capfd, tmp_path, files, request):
    model = request.getfixturevalue(f"{which}_model")
    data = files["ner_dev"] if which == "ner" else files["squad"]
    onnx = tmp_path / "onnx"
    cli_ok(
        monkeypatch, capfd, "export", "--model", model, "--out", onnx, "--data", data, "--max-length", "32"
    )
    parity = read_json(onnx / "parity.json")
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    export = read_json(onnx / "export.json")
    assert export["outputs"] == (["logits"] if which == "ner" else ["start_logits", "end_logits"])
    assert ("token_type_ids" in export["inputs"]) == (which == "qa")  # the QA model's tokenizer makes them
    # ONNX and PyTorch give the same predictions through the same commands
    suffix, src = (".conll", files["tokens"]) if which == "ner" else (".json", files["squad_test"])
    for name, path in (("torch", model), ("onnx", onnx)):
        cli_ok(
            monkeypatch,
            capfd,
            "predict",
            "--model",
            path,
            "--data",
            src,
            "--out",
            tmp_path / f"{name}{suffix}",
        )
    assert (tmp_path / f"torch{suffix}").read_text() == (tmp_path / f"onnx{suffix}").read_text()
    for path in (model, onnx):
        client = TestClient(create_app(path))
        if which == "ner":
            text = "Forest fire near La Ronge Sask. Canada"
            body = client.post("/predict", json={"texts": [text, "ok"]}).json()
            assert len(body["predictions"]) == 2
            for entity in body["predictions"][0]["entities"]:
                assert text[entity["start"] : entity["end"]] == entity["text"] and 0 <= entity["score"] <= 1
            assert client.get("/health").json()["labels"][0] == "O"
        else:
            context = CONTEXTS[0][1]
            answer = client.post(
                "/predict", json={"question": "Where is the fire?", "context": context}
            ).json()
            span = answer["predictions"][0]
            assert context[span["start"] : span["end"]] == span["text"] and isinstance(span["score"], float)
            assert client.post("/predict", json={"texts": ["x"]}).status_code == 422


@pytest.mark.parametrize("which", ["ner", "qa"])
def test_compact_and_sparse_engine_formats_hold_both_heads(which, monkeypatch, capfd, tmp_path, files,
                                                            request):
    """A token classifier / QA model exported compact (fp32: bit-exact, int8: smaller) or for the
    sparse engine reloads with its own head and answers through the same commands."""
    from distilprune.errors import UserError
    from distilprune.export.source import load_source_model
    from distilprune.models.loading import load_classifier

    model = request.getfixturevalue(f"{which}_model")
    head = "ForTokenClassification" if which == "ner" else "ForQuestionAnswering"
    data = files["ner_dev"] if which == "ner" else files["squad"]
    suffix, src = (".conll", files["tokens"]) if which == "ner" else (".json", files["squad_test"])
    exports = {"compact": ["--format", "compact"], "compact-int8": ["--format", "compact", "--int8"],
               "sparse": ["--format", "sparse", "--data", data, "--max-length", "32"]}
    for name, options in exports.items():
        cli_ok(monkeypatch, capfd, "export", "--model", model, "--out", tmp_path / name, *options)
        assert head in type(load_source_model(tmp_path / name)).__name__
    with pytest.raises(UserError, match="not a classifier"):
        load_classifier(tmp_path / "compact")
    parity = read_json(tmp_path / "sparse" / "parity.json")
    assert parity["n_texts"] >= 2 and parity["agreement"] >= 0.5 and parity["max_abs_diff"] < 0.5
    compact = read_json(tmp_path / "compact-int8" / "distilprune.json")["task"]
    assert compact == ("token-classification" if which == "ner" else "question-answering")
    size = {n: (tmp_path / n / "model.compact.safetensors").stat().st_size for n in exports if n != "sparse"}
    assert size["compact-int8"] < size["compact"] / 2
    for name in ("torch", *exports):
        path = model if name == "torch" else tmp_path / name
        cli_ok(monkeypatch, capfd, "predict", "--model", path, "--data", src, "--out",
               tmp_path / f"{name}{suffix}")
    predicted = {n: (tmp_path / f"{n}{suffix}").read_text() for n in ("torch", *exports)}
    assert predicted["compact"] == predicted["torch"]  # the fp32 round trip is exact
    if which == "ner":  # every model tags every token of the test file
        assert all(len(p.splitlines()) == len(predicted["torch"].splitlines()) for p in predicted.values())
    else:
        assert all(json.loads(p).keys() == json.loads(predicted["torch"]).keys() for p in predicted.values())
    out = cli_ok(monkeypatch, capfd, "evaluate", "--model", model, "--data", data, "--engine", "sparse",
                 "--out", tmp_path / "e")
    assert "f1" in out.lower()


# ----------------------------------------------------------------------------- sparsity, distillation
@pytest.mark.parametrize("which", ["ner", "qa"])
def test_lock_sparsity_keeps_zeros_for_both_heads(
    which, monkeypatch, capfd, tmp_path, files, tiny_model_factory
):
    sparse = encoder(tiny_model_factory("bert", 2), tmp_path / "sparse", sparsity=0.5)
    data = files["ner_train"] if which == "ner" else files["squad"]
    extra = ("--max-length", "32") if which == "ner" else QA_ARGS
    run = _finetune(
        monkeypatch,
        capfd,
        sparse,
        data,
        tmp_path / "m",
        "--lock-sparsity",
        "--lr",
        "0.05",
        "--val-fraction",
        "0.3",
        *extra,
    )
    before, after = load_file(sparse / "model.safetensors"), load_file(run / "model.safetensors")
    checked = 0
    for name, weight in before.items():
        if weight.ndim == 2 and ".layer." in name:
            trained = next(v for k, v in after.items() if k.endswith(name))
            assert torch.equal(trained == 0, weight == 0), name
            checked += 1
    assert checked >= 12 and read_json(run / "distilprune.json")["sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("which", ["ner", "qa"])
def test_task_distillation_zero_for_identical_teacher_and_decreasing(which, ner_model, qa_model, files):
    from distilprune.data.batching import make_collator
    from distilprune.distill.objectives import QuestionAnsweringObjective, TokenClassificationObjective
    from distilprune.jobs.common import DataConfig
    from distilprune.jobs.tasks import prepare_task_data
    from distilprune.models.loading import load_task_model, load_tokenizer

    path = ner_model if which == "ner" else qa_model
    task = "token-classification" if which == "ner" else "question-answering"
    tokenizer = load_tokenizer(path)
    cfg = DataConfig(
        train=str(files["ner_train" if which == "ner" else "squad"]),
        validation=str(files["ner_dev" if which == "ner" else "squad"]),
        max_length=24,
        doc_stride=8,
    )
    labels = read_json(path / "distilprune.json")["label_names"]
    data = prepare_task_data(task, cfg, tokenizer, labels)
    batch = make_collator(tokenizer)([dict(data.train[i]) for i in range(4)])
    teacher = load_task_model(path, task, labels).eval()
    cls = TokenClassificationObjective if which == "ner" else QuestionAnsweringObjective
    student = copy.deepcopy(teacher)
    _, logs = cls(teacher, temperature=2.0)(student.eval(), batch)
    assert logs["kd"] == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    for param in student.parameters():
        param.data.add_(0.05 * torch.randn_like(param))
    objective = cls(teacher, temperature=2.0, alpha_soft=1.0, alpha_hard=0.0)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    kd = []
    for _ in range(8):
        loss, logs = objective(student, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kd.append(logs["kd"])
    assert kd[0] > 0 and kd[-1] < 0.5 * kd[0]


def test_task_distillation_through_the_cli(
    monkeypatch, capfd, tmp_path, files, ner_model, tiny_model_factory
):
    run = _finetune(
        monkeypatch,
        capfd,
        tiny_model_factory("bert", 2),
        files["ner_train"],
        tmp_path / "s",
        "--validation",
        files["ner_dev"],
        "--max-length",
        "32",
        "--teacher",
        ner_model,
    )
    meta = read_json(run / "distilprune.json")
    assert meta["distillation"]["teacher"] == str(ner_model)
    assert meta["label_names"] == read_json(ner_model / "distilprune.json")["label_names"]
    assert {"kd", "ce"} <= set(read_json(run / "train_log.json")["losses"][-1])


# ----------------------------------------------------------------------------- bad inputs
def test_wrong_kind_of_data_for_the_model(monkeypatch, capfd, tmp_path, files, ner_model, qa_model):
    csv_file = write(tmp_path / "d.csv", "text,label\nfire,1\nok,0\n")
    assert_user_error(
        monkeypatch,
        capfd,
        tmp_path,
        ["evaluate", "--model", ner_model, "--data", csv_file, "--out", tmp_path / "e"],
        "is a token-classification model",
    )
    assert_user_error(
        monkeypatch,
        capfd,
        tmp_path,
        ["predict", "--model", qa_model, "--data", files["ner_dev"], "--out", tmp_path / "p"],
        "is a question-answering model",
    )
    assert_user_error(
        monkeypatch, capfd, tmp_path, ["predict", "--model", qa_model, "--text", "where?"], "--text-pair"
    )
    assert_user_error(
        monkeypatch,
        capfd,
        tmp_path,
        ["export", "--model", ner_model, "--out", tmp_path / "x", "--format", "deepsparse"],
        "the deepsparse format holds classifiers",
    )


def test_pair_model_refuses_single_texts(monkeypatch, capfd, tmp_path, files, tiny_model_factory):
    run = _finetune(
        monkeypatch,
        capfd,
        tiny_model_factory("bert", 2),
        files["pairs"],
        tmp_path / "m",
        "--max-length",
        "32",
    )
    single = write(tmp_path / "single.csv", "text,label\nfire,entailment\nok,not_entailment\n")
    work = tmp_path / "w"
    work.mkdir()
    assert_user_error(
        monkeypatch,
        capfd,
        work,
        ["evaluate", "--model", run, "--data", single, "--out", work / "e"],
        "no second text column",
    )


@pytest.mark.parametrize("which", ["ner", "qa"])
def test_qat_and_int8_export_for_both_heads(which, monkeypatch, capfd, tmp_path, files, tiny_model_factory):
    data = files["ner_train"] if which == "ner" else files["squad"]
    extra = ("--max-length", "32") if which == "ner" else QA_ARGS
    run = _finetune(
        monkeypatch,
        capfd,
        tiny_model_factory("bert", 2),
        data,
        tmp_path / "m",
        "--qat",
        "--val-fraction",
        "0.3",
        *extra,
    )
    out = cli_ok(
        monkeypatch, capfd, "export", "--model", run, "--out", tmp_path / "x", "--int8", "--max-length", "32"
    )
    assert "int8" in out and read_json(tmp_path / "x" / "export.json")["int8"]
    assert 0.0 <= read_json(tmp_path / "x" / "parity.json")["agreement"] <= 1.0


def test_left_padding_moves_qa_positions_and_token_labels():
    from distilprune.data.batching import make_collator
    from distilprune.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(SAMPLE_TEXTS)
    tokenizer.padding_side = "left"
    items = [
        {"input_ids": [2, 7, 8, 3], "attention_mask": [1] * 4, "start_positions": 1, "end_positions": 2},
        {"input_ids": [2, 7, 3], "attention_mask": [1] * 3, "start_positions": 1, "end_positions": 1},
    ]
    batch = make_collator(tokenizer)(items)
    assert batch["input_ids"][1].tolist() == [0, 2, 7, 3]
    assert batch["start_positions"].tolist() == [1, 2] and batch["end_positions"].tolist() == [2, 2]
    labels = make_collator(tokenizer)(
        [
            {"input_ids": [2, 7, 3], "attention_mask": [1] * 3, "labels": [-100, 1, -100]},
            {"input_ids": [2, 3], "attention_mask": [1] * 2, "labels": [-100, -100]},
        ]
    )
    assert labels["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]


def test_recipes_parse_and_an_ner_pipeline_runs(tmp_path, files, tiny_model_factory):
    from distilprune.config import from_dict
    from distilprune.jobs.pipeline import PipelineConfig, load_recipe, run_pipeline

    root = Path(__file__).resolve().parents[1] / "recipes"
    kinds = {name: load_recipe(root / f"{name}.yaml").data.kind for name in ("qnli", "wnut17", "squad")}
    assert kinds == {
        "qnli": "classification",
        "wnut17": "token-classification",
        "squad": "question-answering",
    }
    steps = {"max_steps": 2, "batch_size": 4, "patience": None}
    corpus = write(
        tmp_path / "corpus.txt", "\n".join(f"{t} number {i}" for i, t in enumerate(SAMPLE_TEXTS * 3))
    )
    recipe = {
        "out": str(tmp_path / "run"),
        "threads": 1,
        "data": {"train": str(files["ner_train"]), "validation": str(files["ner_dev"]), "max_length": 32},
        "teacher": {"model": str(tiny_model_factory("bert", 2)), "train": steps},
        "student": {"layers": 1},
        "mlm_head": {"steps": 1, "batch_size": 4},
        "distill": {
            "corpus": {"files": [str(corpus)], "max_length": 16, "heldout": 2},
            "train": steps,
            "prune": {"method": "unstructured", "final_sparsity": 0.5, "end_fraction": 0.5, "frequency": 1},
        },
        "finetune": {"train": steps, "task_distillation": True},
        "qat": {"steps": 1, "lr": 1e-4},
        "export": {"parity_texts": 4},
        "benchmark": {
            "models": ["teacher", "compressed"],
            "repeats": 1,
            "warmup": 0,
            "batch_sizes": [1],
            "limit": 4,
        },
    }
    cfg = from_dict(PipelineConfig, recipe, "recipe")
    result = run_pipeline(cfg)
    assert set(result.status.values()) == {"ran"}
    out = tmp_path / "run"
    assert read_json(out / "qat" / "distilprune.json")["distillation"]["teacher"].endswith("teacher")
    assert read_json(out / "export" / "onnx-int8" / "export.json")["task"] == "token-classification"
    assert read_json(out / "export" / "compact-int8" / "distilprune.json")["task"] == "token-classification"
    assert read_json(out / "finetune" / "distilprune.json")["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert result.report.is_file()
