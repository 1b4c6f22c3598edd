"""Every bad input distilprune has been tried with, through the CLI: exit code 2, one ``error:`` line
on stderr naming the problem, no traceback, and nothing written or left behind.

:data:`BAD_INPUTS` is the list: one entry per input, built from shared fixtures (``conftest.py``)
and files written into the test's working directory. ``distilprune.cli.main`` runs in-process
(a subprocess per case would re-import torch every time).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_user_error, labelled_csv, run_cli, snapshot, write

FAST = ["--max-steps", "1", "--batch-size", "4"]


class Inputs:
    """What a case is built from: fixtures (``model``, ``mlm_teacher``, ``onnx_export``, ... made on
    first use) and files written into ``work``."""

    def __init__(self, request: pytest.FixtureRequest, work: Path) -> None:
        self._request, self.work = request, work

    def __getattr__(self, name: str) -> Any:
        return self._request.getfixturevalue(name)

    @property
    def good(self) -> Path:
        return self.work / "good.csv"

    def file(self, name: str, text: str | bytes) -> Path:
        if isinstance(text, bytes):
            (self.work / name).write_bytes(text)
            return self.work / name
        return write(self.work / name, text)

    def labels(self, name: str, labels: list[str]) -> Path:
        return labelled_csv(self.work / name, labels)

    def recipe(self, name: str, payload: dict | str) -> Path:
        return self.file(name, payload if isinstance(payload, str) else json.dumps(payload))

    def folder(self, name: str, *files: str) -> Path:
        (self.work / name).mkdir(parents=True)
        for file in files:
            write(self.work / name / file, "mine")
        return self.work / name


Args = Callable[[Inputs], list]


def ft(f: Inputs, *extra: Any, data: Any = None, model: Any = None, out: Any = None) -> list:
    """``finetune`` of the tiny model on ``good.csv`` (one step), plus ``extra``."""
    return [
        "finetune",
        "--model",
        model or f.model,
        "--data",
        data or f.good,
        "--out",
        out or f.work / "o",
        *FAST,
        "--max-length",
        "16",
        *extra,
    ]


def ftr(f: Inputs, recipe: str) -> list:
    """``finetune`` with a recipe (YAML text)."""
    return ft(f, "--recipe", f.recipe("r.yaml", recipe))


def pipeline(f: Inputs, *extra: Any, **sections: Any) -> list:
    """``distilprune run`` of a small recipe whose top-level sections ``sections`` replace."""
    data = str(f.good)
    recipe = {
        "out": str(f.work / "run"),
        "data": {"train": data, "max_length": 16},
        "teacher": {"model": str(f.model), "train": {"max_steps": 1, "batch_size": 4}},
        "distill": {"corpus": {"files": [data]}},
        **sections,
    }
    return ["run", f.recipe("p.yaml", {k: v for k, v in recipe.items() if v is not None}), *extra]


def study(f: Inputs, *extra: Any, **fields: Any) -> list:
    """``distilprune study`` of a one-cell grid, ``fields`` replacing the recipe's."""
    recipe = {
        "out": str(f.work / "study"),
        "data": {"train": str(f.good), "max_length": 16},
        "models": [str(f.model)],
        "seeds": [1],
        "coverage": False,
        "train": {"max_steps": 1, "batch_size": 4},
        **fields,
    }
    return ["study", f.recipe("s.yaml", recipe), *extra]


def mlm(f: Inputs, command: str, *extra: Any, teacher: Any = None, corpus: Any = None) -> list:
    """``fit-mlm-head`` (of the classifier) or ``distill-mlm`` (of the fitted masked-LM), 1 step."""
    default = f.model if command == "fit-mlm-head" else f.mlm_teacher
    return [
        command,
        "--model" if command == "fit-mlm-head" else "--teacher",
        teacher or default,
        "--out",
        f.work / "m",
        "--corpus",
        corpus or f.good,
        "--max-steps",
        "1",
        "--max-length",
        "16",
        *extra,
    ]


def predict(f: Inputs, model: Any, *extra: Any) -> list:
    return ["predict", "--model", model, "--data", f.good, "--out", f.work / "p.csv", *extra]


def evaluate(f: Inputs, model: Any, *extra: Any, data: Any = None) -> list:
    return ["evaluate", "--model", model, "--data", data or f.good, "--out", f.work / "ev", *extra]


def bench(f: Inputs, *extra: Any, models: tuple = ()) -> list:
    return [
        "benchmark",
        *(models or (f.model,)),
        "--out",
        f.work / "speed",
        "--repeats",
        "1",
        "--warmup",
        "0",
        *extra,
    ]


def export(f: Inputs, model: Any, *extra: Any) -> list:
    return ["export", "--model", model, "--out", f.work / "x", "--max-length", "16", *extra]


def quantize(f: Inputs, model: Any, *extra: Any) -> list:
    return [
        "quantize",
        "--model",
        model,
        "--out",
        f.work / "q",
        "--data",
        f.good,
        "--max-length",
        "16",
        *extra,
    ]


def shrink(f: Inputs, model: Any, *extra: Any) -> list:
    return ["shrink", "--model", model, "--out", f.work / "sh", "--heads", "0.5", *extra]


def student(f: Inputs, *extra: Any, teacher: Any = None) -> list:
    return ["student", "--model", teacher or f.model, "--out", f.work / "st", *extra]


# Every command that writes an output, with that output at ``out``.
WRITERS: dict[str, Callable[[Inputs, Any], list]] = {
    "finetune": lambda f, o: ft(f, out=o),
    "student": lambda f, o: student(f, "--layers", "1") + ["--out", o],
    "fit-mlm-head": lambda f, o: mlm(f, "fit-mlm-head", "--out", o),
    "distill-mlm": lambda f, o: mlm(f, "distill-mlm", "--out", o),
    "export": lambda f, o: export(f, f.model, "--out", o),
    "quantize": lambda f, o: quantize(f, f.onnx_export, "--out", o),
    "predict": lambda f, o: predict(f, f.model, "--out", o),
    "evaluate": lambda f, o: evaluate(f, f.model, "--out", o),
    "benchmark": lambda f, o: bench(f, "--out", o),
    "shrink": lambda f, o: shrink(f, f.model, "--out", o),
    "sparsity": lambda f, o: ["sparsity", f.model, "--out", o],
    "run": lambda f, o: pipeline(f, "--out", o),
    "study": lambda f, o: study(f, "--out", o),
}

# Every command that loads a PyTorch model from a directory given by the user.
LOADERS: dict[str, Callable[[Inputs, Any], list]] = {
    "predict_text": lambda f, m: ["predict", "--model", m, "--text", "fire"],
    "predict_data": lambda f, m: predict(f, m),
    "evaluate": lambda f, m: evaluate(f, m),
    "finetune": lambda f, m: ft(f, model=m),
    "export": lambda f, m: export(f, m),
    "serve": lambda f, m: ["serve", "--model", m],
    "benchmark": lambda f, m: bench(f, models=(m,)),
    "student": lambda f, m: student(f, "--layers", "1", teacher=m),
    "shrink": lambda f, m: shrink(f, m),
    "sparsity": lambda f, m: ["sparsity", m],
}

BLANK_ROWS = 'text,target\nfire here,1\n"   ",0\nnice day,0\n,1\n'
JSONL_NULL = "\n".join(json.dumps({"text": t, "label": y}) for t, y in (("fire", 1), (None, 0), ("ok", 0)))
JSONL_BAD = '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": oops}\n'
LATIN1 = "text,target\ncaf\xe9 br\xfbl\xe9,1\nna\xefve,0\n".encode("latin-1")
FT_RECIPE = "finetune:\n  train:\n    epochs: 1\n"
SQUAD_BAD = json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Fire near Canada.", "qas": [
    {"id": "q1", "question": "Where?", "answers": [{"text": "in Ottawa", "answer_start": 10}]}]}]}]})

BAD_INPUTS: dict[str, tuple[Args, str]] = {
    # ---- data files and columns
    "data/missing": (lambda f: ft(f, data=f.work / "nope.csv"), "data file not found"),
    "data/a_directory": (lambda f: ft(f, data=f.work), "is a directory, not a file"),
    "data/empty": (lambda f: ft(f, data=f.file("d.csv", "")), "is empty"),
    "data/header_only": (lambda f: ft(f, data=f.file("d.csv", "id,text,target\n")), "no data rows"),
    "data/not_utf8": (lambda f: ft(f, data=f.file("d.csv", LATIN1)), "not UTF-8"),
    "data/wrong_text_column": (lambda f: ft(f, "--text-column", "body"), "text column 'body'"),
    "data/wrong_label_column": (lambda f: ft(f, "--label-column", "y"), "label column 'y'"),
    "data/no_label_column": (
        lambda f: ft(f, data=f.file("d.csv", "id,text\n1,hi there\n2,fire\n")),
        "no label column",
    ),
    "data/three_classes_binary_head": (  # multi-class data: the classes come from the file (#20)
        lambda f: ft(f, data=f.labels("d.csv", ["0", "1", "2"] * 8)),
        "2-class classification head",
    ),
    "data/validation_split_smaller_than_the_classes": (
        lambda f: ft(f, data=f.labels("d.csv", ["0", "1", "2"] * 4)),
        "fewer than the 3 classes",
    ),
    "data/blank_text_rows": (
        lambda f: ft(f, data=f.file("d.csv", BLANK_ROWS)),
        "2 rows have an empty text (data rows 2, 4)",
    ),
    "data/text_column_all_empty": (
        lambda f: ft(f, data=f.file("d.csv", 'text,target\n"",1\n')),
        "text column 'text' is empty",
    ),
    "data/jsonl_null_text": (
        lambda f: predict(f, f.model, "--data", f.file("d.jsonl", JSONL_NULL)),
        "data rows 2",
    ),
    "data/jsonl_bad_line": (lambda f: predict(f, f.model, "--data", f.file("d.jsonl", JSONL_BAD)), "line 3"),
    "data/single_class_integers": (lambda f: ft(f, data=f.labels("d.csv", ["1"] * 10)), "every label is '1'"),
    "data/single_class_strings": (
        lambda f: ft(f, data=f.labels("d.csv", ["yes"] * 10)),
        "every label is 'yes'",
    ),
    "data/validation_missing": (lambda f: ft(f, "--validation", f.work / "nope.csv"), "data file not found"),
    "data/validation_unknown_label": (
        lambda f: ft(
            f, "--validation", f.labels("v.csv", ["yes", "nope"]), data=f.labels("t.csv", ["no", "yes"] * 6)
        ),
        "'nope'",
    ),
    "data/evaluate_unknown_label": (
        lambda f: evaluate(f, f.yes_no_model, data=f.labels("e.csv", ["yes", "maybe", "no"])),
        "label values 'maybe' are not labels of the model (its labels: no, yes)",
    ),
    "data/more_classes_than_the_head": (
        lambda f: ft(
            f,
            "--recipe",
            f.recipe("r.yaml", "finetune:\n  data:\n    num_labels: 3\n"),
            data=f.labels("d.csv", ["0", "1", "2"] * 6),
        ),
        "2-class classification head",
    ),
    "data/unknown_preprocess_step": (lambda f: ft(f, "--preprocess", "html,bogus"), "unknown preprocessing"),
    "data/unknown_imbalance": (lambda f: ft(f, "--imbalance", "smote"), "imbalance"),
    "data/corpus_missing": (
        lambda f: mlm(f, "fit-mlm-head", corpus=f.work / "no.txt"),
        "corpus file not found",
    ),
    "data/corpus_a_directory": (lambda f: mlm(f, "distill-mlm", corpus=f.work), "is a directory"),
    "data/corpus_without_text": (
        lambda f: mlm(f, "fit-mlm-head", corpus=f.file("c.txt", "a b\n")),
        "no usable text",
    ),
    "data/export_parity_data_missing": (
        lambda f: export(f, f.model, "--data", f.work / "no.csv"),
        "data file not found",
    ),
    "data/benchmark_data_missing": (lambda f: bench(f, "--data", f.work / "no.csv"), "data file not found"),
    "data/quantize_calibration_empty": (
        lambda f: quantize(f, f.onnx_export, "--data", f.file("d.csv", "")),
        "is empty",
    ),
    # ---- task kinds (issue #20): NER, QA and text-pair data
    "task/unknown_task": (lambda f: ft(f, "--task", "parsing"), "unknown task 'parsing'"),
    "task/pair_column_missing": (
        lambda f: ft(f, "--text-pair-column", "sentence2"),
        "text-pair column 'sentence2'",
    ),
    "task/pair_file_empty_second_text": (
        lambda f: ft(f, data=f.file("d.tsv", "question\tsentence\tlabel\nwhere?\tthere\tyes\nwho?\t\tno\n")),
        "empty text",
    ),
    "task/conll_missing_tag": (
        lambda f: ft(f, data=f.file("d.conll", "fire\tO\nnear\nCanada\tB-location\n")),
        "token 'near' has no tag",
    ),
    "task/conll_mixed_schemes": (
        lambda f: ft(f, data=f.file("d.conll", "La\tB-loc\nRonge\tI-loc\n\nin\tO\nCanada\tI-loc\n")),
        "mixes BIO with IO tags",
    ),
    "task/squad_answer_not_in_context": (
        lambda f: ft(f, data=f.file("q.json", SQUAD_BAD)),
        "does not occur in its context",
    ),
    "task/conll_for_a_classifier": (
        lambda f: evaluate(f, f.model, data=f.file("d.conll", "fire\tO\n")),
        "is token-classification data",
    ),
    "task/squad_for_a_classifier": (
        lambda f: predict(f, f.model, "--data", f.file("q.json", SQUAD_BAD)),
        "is question-answering data",
    ),
    # ---- models
    "model/unknown_alias": (lambda f: ft(f, model="minilm-l99"), "minilm-l99"),
    "model/missing_directory": (lambda f: evaluate(f, f.work / "no_model"), "model not found"),
    "model/directory_without_config": (lambda f: ft(f, model=f.folder("nm", "README.txt")), "no config.json"),
    "model/data_file_as_model": (
        lambda f: ["predict", "--model", f.good, "--text", "fire"],
        "is a file, not a model directory",
    ),
    "model/onnx_file_as_model": (
        lambda f: ["predict", "--model", f.onnx_export / "model.onnx", "--text", "x"],
        "is a file, not a model directory (an ONNX model",
    ),
    **{
        f"model/onnx_export_as_torch_model/{name}": (
            (lambda f, make=make: make(f, f.onnx_export)),
            "is an ONNX export",
        )
        for name, make in LOADERS.items()
        if name not in ("serve", "benchmark", "export", "evaluate", "predict_text", "predict_data")
    },  # those run ONNX exports (tests/test_interop.py)
    "model/onnx_export_as_distill_student": (
        lambda f: mlm(f, "distill-mlm", "--student", f.onnx_export),
        "is an ONNX export",
    ),
    **{
        f"model/without_tokenizer/{name}": (
            (lambda f, make=make: make(f, f.no_tokenizer)),
            "no tokenizer files",
        )
        for name, make in LOADERS.items()
        if name not in ("shrink", "sparsity")
    },
    **{
        f"model/onnx_without_tokenizer/{name}": (
            (lambda f, make=LOADERS[name]: make(f, f.onnx_no_tokenizer)),
            "no tokenizer files",
        )
        for name in ("serve", "benchmark")
    },
    **{
        f"model/truncated_weights/{name}": (
            (lambda f, make=make: make(f, f.truncated)),
            "truncated or corrupt",
        )
        for name, make in LOADERS.items()
        if name != "benchmark"
    },
    "model/masked_lm_to_predict": (
        lambda f: ["predict", "--model", f.mlm_teacher, "--text", "fire"],
        "not a trained classifier",
    ),
    "model/masked_lm_to_evaluate": (lambda f: evaluate(f, f.mlm_teacher), "not a trained classifier"),
    "model/masked_lm_as_task_teacher": (
        lambda f: ft(f, "--teacher", f.mlm_teacher),
        "not a trained classifier",
    ),
    "model/unknown_task_teacher": (lambda f: ft(f, "--teacher", "nope-x"), "unknown model 'nope-x'"),
    "model/teacher_without_fitted_mlm_head": (
        lambda f: mlm(f, "distill-mlm", teacher=f.model),
        "fit-mlm-head",
    ),
    "model/student_too_deep": (lambda f: student(f, "--layers", "9"), "a student needs 1..2 layers"),
    "model/student_zero_layers": (lambda f: student(f, "--layers", "0"), "a student needs 1..2 layers"),
    "model/layer_map_out_of_range": (lambda f: student(f, "--layer-map", "0,5"), "out of range"),
    "model/layer_map_not_integers": (lambda f: student(f, "--layer-map", "a,b"), "integers"),
    "model/layer_map_repeats": (lambda f: student(f, "--layer-map", "0,0"), "repeats"),
    "model/distill_student_too_deep": (lambda f: mlm(f, "distill-mlm", "--layers", "5"), "1..2 layers"),
    "model/max_length_beyond_positions/finetune": (lambda f: ft(f, "--max-length", "1000"), "longer than"),
    "model/max_length_beyond_positions/fit-mlm-head": (
        lambda f: mlm(f, "fit-mlm-head", "--max-length", "999"),
        "longer than",
    ),
    "model/max_length_beyond_positions/distill-mlm": (
        lambda f: mlm(f, "distill-mlm", "--max-length", "999"),
        "longer than",
    ),
    "model/benchmark_unknown_model": (
        lambda f: bench(f, models=(f.model, f.work / "nope")),
        "model not found",
    ),
    "model/benchmark_unknown_suffix": (lambda f: bench(f, models=(f"{f.model}@bogus",)), "unknown suffix"),
    "model/quantize_needs_onnx_export": (lambda f: quantize(f, f.model), "not an ONNX export"),
    "model/quantize_onnx_file": (lambda f: quantize(f, f.onnx_export / "model.onnx"), "not an ONNX export"),
    "model/install_unknown_alias": (lambda f: ["models", "install", "bogus"], "unknown model alias 'bogus'"),
    # ---- outputs
    "out/existing_directory": (lambda f: ft(f, out=f.folder("o", "keep.txt")), "already exists"),
    "out/existing_predictions": (
        lambda f: predict(f, f.model, "--out", f.file("p.csv", "id,target\n")),
        "already exists",
    ),
    **{
        f"out/under_proc/{name}": (
            (lambda f, make=make: make(f, "/proc/distilprune-x")),
            "/proc is not writable",
        )
        for name, make in WRITERS.items()
    },
    **{
        f"out/under_a_file/{name}": (
            (lambda f, make=make: make(f, f.file("a_file", "x") / "sub" / "o")),
            "a_file is a file",
        )
        for name, make in WRITERS.items()
    },
    **{
        f"out/current_directory/{name}": ((lambda f, make=WRITERS[name]: make(f, ".")), "current directory")
        for name in ("finetune", "predict", "export", "evaluate")
    },
    "out/new_parents_removed_on_failure": (
        lambda f: ft(f, data=f.labels("d.csv", ["1"] * 10), out=f.work / "x" / "y" / "o"),
        "at least two",
    ),
    # ---- numbers out of range
    **{
        f"number/finetune{option}={value}": ((lambda f, o=option, v=value: ft(f, o, v)), fragment)
        for option, value, fragment in [
            ("--batch-size", "0", "batch_size"),
            ("--batch-size", "-1", "batch_size"),
            ("--lr", "-1", "lr"),
            ("--limit", "-5", "limit"),
            ("--seed", "-1", "seed"),
            ("--max-steps", "0", "max_steps"),
            ("--epochs", "0", "epochs"),
            ("--checkpoint-every", "0", "checkpoint_every"),
            ("--val-fraction", "1", "val_fraction"),
            ("--patience", "-1", "patience"),
            ("--max-length", "4", "max_length must be >= 8"),
        ]
    },
    **{
        f"number/prune{'/'.join(extra)}": ((lambda f, e=extra: ft(f, "--prune", *e)), fragment)
        for extra, fragment in [
            (("random",), "unknown pruning method"),
            (("unstructured", "--final-sparsity", "1.5"), "final_sparsity"),
            (("block", "--block-size", "0"), "block size"),
            (("unstructured", "--prune-end", "2"), "end_fraction"),
            (("unstructured", "--prune-every", "0"), "frequency"),
            (("structured", "--prune-heads", "1.5"), "heads fraction"),
            (("unstructured", "--prune-scope", "bogus"), "scope"),
        ]
    },
    "number/task_temperature_0": (lambda f: ft(f, "--teacher", f.model, "--temperature", "0"), "temperature"),
    "number/task_alpha_negative": (lambda f: ft(f, "--teacher", f.model, "--alpha-soft", "-1"), "alpha_soft"),
    "number/distill_temperature_0": (lambda f: mlm(f, "distill-mlm", "--temperature", "0"), "temperature"),
    "number/distill_alpha_negative": (lambda f: mlm(f, "distill-mlm", "--alpha-ce", "-1"), "alpha_ce"),
    "number/distill_all_weights_0": (
        lambda f: mlm(f, "distill-mlm", "--alpha-ce", "0", "--alpha-mlm", "0", "--alpha-cos", "0"),
        "all 0",
    ),
    "number/distill_cos_layers": (lambda f: mlm(f, "distill-mlm", "--cos-layers", "some"), "cos_layers"),
    "number/distill_grad_accum_0": (lambda f: mlm(f, "distill-mlm", "--grad-accum", "0"), "grad_accum"),
    "number/mlm_steps_0": (lambda f: mlm(f, "fit-mlm-head", "--max-steps", "0"), "max_steps"),
    "number/mlm_corpus_limit_0": (lambda f: mlm(f, "fit-mlm-head", "--corpus-limit", "0"), "corpus limit"),
    **{
        f"number/benchmark_batch_sizes={sizes}": (
            (lambda f, s=sizes: bench(f, "--batch-sizes", s)),
            "--batch-sizes",
        )
        for sizes in ("abc", "1,0", "8,,x")
    },
    **{
        f"number/benchmark{option}={value}": ((lambda f, o=option, v=value: bench(f, o, v)), option)
        for option, value in [
            ("--threads", "0"),
            ("--repeats", "0"),
            ("--warmup", "-1"),
            ("--max-length", "1"),
            ("--limit", "0"),
        ]
    },
    "number/export_limit_negative": (
        lambda f: export(f, f.model, "--data", f.good, "--limit", "-1"),
        "--limit",
    ),
    "number/export_max_length_0": (lambda f: export(f, f.model, "--max-length", "0"), "max length"),
    "number/quantize_limit_0": (lambda f: quantize(f, f.onnx_export, "--limit", "0"), "--limit"),
    "number/shrink_heads_1": (lambda f: shrink(f, f.model, "--heads", "1"), "head_fraction"),
    "number/shrink_neurons_negative": (lambda f: shrink(f, f.model, "--neurons", "-1"), "neuron_fraction"),
    "number/demo_threads_0": (lambda f: ["demo", "--threads", "0", "--out", f.work / "demo"], "--threads"),
    "number/study_max_runs_negative": (lambda f: study(f, "--max-runs", "-1"), "--max-runs"),
    # ---- recipes
    "recipe/missing": (lambda f: ft(f, "--recipe", f.work / "nope.yaml"), "recipe not found"),
    "set/no_equals": (lambda f: ft(f, "--set", "train.lr"), "expected KEY=VALUE"),
    "set/unknown_key": (lambda f: ft(f, "--set", "train.lrr=1e-4"), "finetune.train: unknown key 'lrr'"),
    "set/wrong_type": (lambda f: ft(f, "--set", "train.epochs=many"), "many"),
    "set/run_unknown_key": (lambda f: pipeline(f, "--set", "qat.stepz=3"), "recipe.qat: unknown key 'stepz'"),
    "recipe/a_directory": (lambda f: ft(f, "--recipe", f.work), "is a directory"),
    "recipe/empty": (lambda f: ftr(f, ""), "must be a YAML mapping"),
    "recipe/not_a_mapping": (lambda f: ftr(f, "- a\n- b\n"), "mapping"),
    "recipe/invalid_yaml": (lambda f: ftr(f, "finetune:\n  train: [1, 2\n"), "not valid YAML"),
    "recipe/section_not_a_mapping": (lambda f: ftr(f, "finetune: 3\n"), "expected a mapping"),
    "recipe/unknown_key": (lambda f: ftr(f, "finetune:\n  train:\n    epochz: 2\n"), "unknown key 'epochz'"),
    "recipe/unknown_section_key": (lambda f: ftr(f, "finetune:\n  bogus: 1\n"), "unknown key 'bogus'"),
    "recipe/task_loss_without_teacher": (
        lambda f: ftr(f, "finetune:\n  loss:\n    alpha_soft: 0.7\n"),
        "finetune.loss: task distillation needs a teacher",
    ),
    "recipe/task_loss_flag_without_teacher": (
        lambda f: ft(f, "--temperature", "3"),
        "finetune.loss: task distillation needs a teacher",
    ),
    "recipe/unknown_task_loss_key": (
        lambda f: ftr(f, f"finetune:\n  teacher: {f.model}\n  loss:\n    alpah_soft: 1\n"),
        "finetune.loss: unknown key 'alpah_soft'",
    ),
    "recipe/unknown_data_key": (
        lambda f: ftr(f, "finetune:\n  data:\n    x: 1\n"),
        "finetune.data: unknown key 'x'",
    ),
    "recipe/unknown_qat_key": (
        lambda f: ftr(f, "finetune:\n  qat:\n    x: 1\n"),
        "finetune.qat: unknown key 'x'",
    ),
    "recipe/unknown_top_level_key": (
        lambda f: ftr(f, FT_RECIPE + "epochs: 3\n"),
        "unknown top-level key 'epochs'",
    ),
    "recipe/wrong_type": (lambda f: ftr(f, "finetune:\n  train:\n    epochs: many\n"), "many"),
    "recipe/wrong_list_type": (
        lambda f: ftr(f, "finetune:\n  data:\n    preprocess: 5\n"),
        "expected a list",
    ),
    "recipe/negative_lr": (lambda f: ftr(f, "finetune:\n  train:\n    lr: -3\n"), "lr must be > 0"),
    "recipe/other_command_section": (
        lambda f: mlm(f, "distill-mlm", "--recipe", f.recipe("r.yaml", {"bogus": 1})),
        "distill_mlm: unknown key 'bogus'",
    ),
    # ---- pipeline recipes (distilprune run): every one fails before its first stage
    "run/missing_recipe": (lambda f: ["run", f.work / "nope.yaml"], "recipe not found"),
    "run/unknown_top_level_key": (lambda f: pipeline(f, bogus=1), "recipe: unknown key 'bogus'"),
    "run/unknown_nested_key": (
        lambda f: pipeline(f, teacher={"model": str(f.model), "train": {"bogus": 1}}),
        "recipe.teacher.train: unknown key 'bogus'",
    ),
    "run/wrong_type": (lambda f: pipeline(f, qat={"steps": "many"}), "recipe.qat.steps"),
    "run/no_teacher_model": (lambda f: pipeline(f, teacher=None), "teacher.model"),
    "run/unknown_teacher_model": (
        lambda f: pipeline(f, teacher={"model": "nope-x"}),
        "unknown model 'nope-x'",
    ),
    "run/teacher_without_tokenizer": (
        lambda f: pipeline(f, teacher={"model": str(f.no_tokenizer)}),
        "no tokenizer files",
    ),
    "run/data_missing": (
        lambda f: pipeline(f, data={"train": str(f.work / "no.csv")}),
        "data file not found",
    ),
    "run/data_single_class": (
        lambda f: pipeline(f, data={"train": str(f.labels("d.csv", ["1"] * 10))}),
        "at least two classes",
    ),
    "run/max_length_beyond_positions": (
        lambda f: pipeline(f, data={"train": str(f.good), "max_length": 999}),
        "longer than",
    ),
    "run/student_too_deep": (lambda f: pipeline(f, student={"layers": 9}), "a student needs 1..2 layers"),
    "run/student_layer_map": (lambda f: pipeline(f, student={"layer_map": [0, 7]}), "out of range"),
    "run/threads_0": (lambda f: pipeline(f, threads=0), "threads must be >= 1"),
    "run/mlm_head_steps_0": (lambda f: pipeline(f, mlm_head={"steps": 0}), "mlm_head.steps"),
    "run/qat_lr_0": (lambda f: pipeline(f, qat={"lr": 0}), "qat.lr"),
    "run/export_parity_texts_0": (lambda f: pipeline(f, export={"parity_texts": 0}), "export.parity_texts"),
    "run/benchmark_models": (lambda f: pipeline(f, benchmark={"models": ["bogus"]}), "benchmark.models"),
    "run/benchmark_repeats_0": (lambda f: pipeline(f, benchmark={"repeats": 0}), "benchmark.repeats"),
    "run/benchmark_batch_sizes": (
        lambda f: pipeline(f, benchmark={"batch_sizes": [0]}),
        "benchmark.batch_sizes",
    ),
    "run/unknown_stage": (lambda f: pipeline(f, "--stages", "qta"), "unknown stage 'qta'"),
    "run/stage_without_its_upstream": (lambda f: pipeline(f, "--stages", "finetune"), "needs the output"),
    # ---- study recipes
    "study/unknown_key": (lambda f: study(f, bogus=1), "study: unknown key 'bogus'"),
    "study/unknown_model": (lambda f: study(f, models=["nope-x"]), "unknown model 'nope-x'"),
    "study/negative_learning_rate": (
        lambda f: study(f, learning_rates=[-1]),
        "learning rates must be positive",
    ),
    "study/negative_max_runs": (lambda f: study(f, max_runs=-1), "max_runs"),
    "study/threads_0": (lambda f: study(f, threads=0), "threads"),
    "study/eval_batch_size_0": (lambda f: study(f, eval_batch_size=0), "eval_batch_size"),
    "study/duplicate_seeds": (lambda f: study(f, seeds=[1, 1]), "duplicates"),
    # ---- command usage
    "usage/predict_without_data_or_text": (lambda f: ["predict", "--model", f.model], "--text"),
    "usage/predict_data_without_out": (lambda f: ["predict", "--model", f.model, "--data", f.good], "--out"),
    "usage/predict_empty_text": (lambda f: ["predict", "--model", f.model, "--text", "  "], "empty text"),
    "usage/unknown_engine": (
        lambda f: ["predict", "--model", f.model, "--text", "x", "--engine", "gpu"],
        "unknown engine 'gpu'",
    ),
    "usage/unknown_export_format": (
        lambda f: export(f, f.model, "--format", "tflite"),
        "unknown export format",
    ),
    "usage/finetune_without_model": (
        lambda f: ["finetune", "--data", f.good, "--out", f.work / "o"],
        "--model",
    ),
    "usage/distill_mlm_without_teacher": (lambda f: ["distill-mlm", "--out", f.work / "s"], "--teacher"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(monkeypatch, capfd, request, work, case):
    monkeypatch.chdir(work)  # "." and relative paths stay inside the test's directory
    monkeypatch.setattr("uvicorn.run", _never)  # serve must fail before serving
    for module in ("distilprune.jobs.finetune", "distilprune.jobs.distill"):
        monkeypatch.setattr(f"{module}.train", _never)  # every case fails before training
    make, fragment = BAD_INPUTS[case]
    args = make(Inputs(request, work))
    assert_user_error(monkeypatch, capfd, work, args, fragment)


def _never(*_args, **_kwargs):
    raise AssertionError("a bad input must fail before any work")


def test_bracketed_path_is_not_rich_markup(monkeypatch, capfd, work, model):
    missing = work / "runs[/v2]" / "data[bold].csv"
    line = assert_user_error(
        monkeypatch, capfd, work, ft(Inputs(None, work), data=missing, model=model), "data file not found"
    )
    assert "runs[/v2]/data[bold].csv" in line


def test_onnx_file_is_not_reported_missing(monkeypatch, capfd, work, onnx_export):
    args = ["predict", "--model", onnx_export / "model.onnx", "--text", "fire"]
    assert "not found" not in assert_user_error(monkeypatch, capfd, work, args, "is a file")


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--text", "fire"],  # missing required --model
        ["finetune", "--epochs", "many"],  # not a number
        ["finetune", "--no-such-flag"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2_without_traceback(monkeypatch, capfd, tmp_path, args):
    before = snapshot(tmp_path)
    code, _out, err = run_cli(monkeypatch, capfd, *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert "Error:" in err
    assert snapshot(tmp_path) == before


def test_help_exits_0(monkeypatch, capfd):
    code, out, err = run_cli(monkeypatch, capfd, "finetune", "--help")
    assert code == 0, err
    assert "--lock-sparsity" in out and "Traceback" not in err
