"""Data: table loading (CSV/TSV/JSONL/JSON), splits, length-grouped batching, imbalance helpers."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter

import pytest
import torch
from conftest import SAMPLE_TEXTS

from distilprune.data.batching import (
    EncodedDataset,
    LengthGroupedBatchSampler,
    class_weights,
    encode,
    make_collator,
    oversample_indices,
)
from distilprune.data.loading import load_table
from distilprune.data.split import stratified_split
from distilprune.errors import UserError
from distilprune.jobs.common import preprocess_table
from distilprune.models import load_tokenizer

MULTILINE = 'Flood warning,\nevacuate "now"\n\nstay safe'


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def kaggle_csv(tmp_path):
    return write_csv(
        tmp_path / "train.csv",
        ["id", "keyword", "location", "text", "target"],
        [
            [7, "ablaze", "London", "Forest fire near La Ronge", 1],
            [12, "", "", MULTILINE, 1],
            [30, "", "Paris, France", "I love fruits", 0],
        ],
    )


# ----------------------------------------------------------------------------- load_table
def test_load_kaggle_csv_with_multiline_quoted_text(kaggle_csv):
    table = load_table(kaggle_csv)
    assert len(table) == 3
    assert table.texts[1] == MULTILINE  # quoted newlines and quotes kept verbatim
    assert table.labels == [1, 1, 0]
    assert table.ids == ["7", "12", "30"]
    assert table.label_names == ["0", "1"]
    assert table.extras[0] == {"keyword": "ablaze", "location": "London"}
    assert table.extras[2]["location"] == "Paris, France"
    assert table.extras[1] == {"keyword": "", "location": ""}  # empty cells are "", not "nan"
    assert table.sha256 == hashlib.sha256(kaggle_csv.read_bytes()).hexdigest()
    assert table.source == str(kaggle_csv)


def test_load_sst2_tsv_quoting_disabled(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(
        'sentence\tlabel\nhe said "wow , what a film\t1\na "dull" movie \t0\nplain text\t1\n',
        encoding="utf-8",
    )
    table = load_table(path)
    assert table.texts == ['he said "wow , what a film', 'a "dull" movie ', "plain text"]
    assert table.labels == [1, 0, 1]
    assert table.ids == ["0", "1", "2"]  # no id column: row numbers
    assert table.extras == []


@pytest.mark.parametrize(("name", "text"), [
    ("train.tsv", "sentence\tlabel\na good film\t1\textra\nbad\t0\n"),
    ("train.csv", "text,target\nfire downtown,1,extra\ncalm,0\n"),
])
def test_a_first_row_with_a_field_too_many_is_refused_not_shifted(tmp_path, name, text):
    """pandas would take the first column as the index and shift the others by one: the texts
    read as labels, the labels lost, and training goes on (a wrong answer with exit code 0)."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=f"cannot parse .*{name}: a row has more fields than the header"):
        load_table(path, None, None)


def test_glue_pair_quirks_load_as_written(tmp_path):
    path = tmp_path / "qnli.tsv"
    path.write_text('index\tquestion\tsentence\tlabel\n7\t"What" is it?\tIt is "quoted\tentailment\n'
                    "8\tnull\tNA\tnot_entailment\n")
    table = load_table(path, None, None)
    assert table.texts == ['"What" is it?', "null"] and table.pairs == ['It is "quoted', "NA"]
    assert table.labels == [0, 1] and table.label_names == ["entailment", "not_entailment"]


def test_load_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {"id": "a", "text": "good film", "label": 1},
        {"id": "b", "text": "bad film", "label": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    table = load_table(path)
    assert table.texts == ["good film", "bad film"]
    assert table.labels == [1, 0]
    assert table.ids == ["a", "b"]


def test_load_json_array_with_short_keys(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([{"t": "one two", "s": 0}, {"t": "three", "s": 1}, {"t": "four", "s": 1}])
    )
    table = load_table(path)
    assert table.texts == ["one two", "three", "four"]
    assert table.labels == [0, 1, 1]


def test_auto_column_detection_is_case_insensitive(tmp_path):
    path = write_csv(
        tmp_path / "d.csv", ["Review", "Sentiment", "other"], [["nice", 1, "x"], ["awful", 0, "y"]]
    )
    table = load_table(path)
    assert table.texts == ["nice", "awful"]
    assert table.labels == [1, 0]


def test_explicit_columns_override_detection(tmp_path):
    # "text"/"target" exist but the explicit columns must win
    path = write_csv(
        tmp_path / "d.csv",
        ["text", "target", "body", "y"],
        [["decoy", 0, "real one", 1], ["decoy", 0, "real two", 0]],
    )
    table = load_table(path, text_column="body", label_column="y")
    assert table.texts == ["real one", "real two"]
    assert table.labels == [1, 0]
    with pytest.raises(UserError, match="'nope'"):
        load_table(path, text_column="nope")
    with pytest.raises(UserError, match="label column 'nope'"):
        load_table(path, label_column="nope")


def test_unlabelled_table(tmp_path):
    path = write_csv(tmp_path / "test.csv", ["id", "text"], [[1, "a b"], [2, "c d"]])
    table = load_table(path, require_labels=False)
    assert table.labels is None
    assert table.ids == ["1", "2"]
    with pytest.raises(UserError, match="no label column"):
        load_table(path)


def test_string_labels_are_mapped_to_sorted_ids(tmp_path):
    path = write_csv(
        tmp_path / "d.csv",
        ["text", "label"],
        [["a", "pos"], ["b", "neg"], ["c", "pos"], ["d", " neg "]],
    )
    table = load_table(path)
    assert table.label_names == ["neg", "pos"]
    assert table.labels == [1, 0, 1, 0]
    three = write_csv(
        tmp_path / "three.csv", ["text", "label"], [["a", "x"], ["b", "y"], ["c", "z"]]
    )
    with pytest.raises(UserError, match="expected 2 label values"):
        load_table(three)
    assert load_table(three, num_labels=3).labels == [0, 1, 2]
    assert load_table(three, num_labels=None).label_names == ["x", "y", "z"]


def test_integer_labels_out_of_range(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", 0], ["b", 1], ["c", 2]])
    with pytest.raises(UserError, match="binary"):
        load_table(path)
    assert load_table(path, num_labels=3).label_names == ["0", "1", "2"]


# ----------------------------------------------------------------------------- split
def test_stratified_split_deterministic_stratified_disjoint():
    labels = [0] * 70 + [1] * 30
    train_a, val_a = stratified_split(labels, 0.2, seed=7)
    train_b, val_b = stratified_split(labels, 0.2, seed=7)
    assert (train_a, val_a) == (train_b, val_b)
    assert stratified_split(labels, 0.2, seed=8)[1] != val_a
    assert set(train_a).isdisjoint(val_a)
    assert sorted(train_a + val_a) == list(range(100))
    assert len(val_a) == 20
    assert train_a == sorted(train_a) and val_a == sorted(val_a)
    overall = sum(labels) / len(labels)
    for part in (train_a, val_a):
        assert abs(sum(labels[i] for i in part) / len(part) - overall) <= 0.05


def test_stratified_split_rejects_bad_input():
    with pytest.raises(UserError):
        stratified_split([0, 0, 1, 1], 1.5, seed=0)
    with pytest.raises(UserError, match="at least 2"):
        stratified_split([0, 0, 0, 1], 0.5, seed=0)


# ----------------------------------------------------------------------------- batching
def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def test_length_grouped_sampler_covers_each_index_once():
    lengths = [(i * 37) % 23 + 1 for i in range(1003)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3)
    batches = _epoch(sampler, 0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert len(batches) == len(sampler) == 126
    assert all(len(b) <= 8 for b in batches)
    # within a megabatch batches are length-sorted, so each batch is tightly grouped
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(
        batches
    )
    assert spread < 5


def test_length_grouped_sampler_deterministic_and_epoch_dependent():
    lengths = [i % 17 + 1 for i in range(200)]
    a = LengthGroupedBatchSampler(lengths, batch_size=4, seed=1)
    b = LengthGroupedBatchSampler(lengths, batch_size=4, seed=1)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 0) != _epoch(LengthGroupedBatchSampler(lengths, 4, seed=2), 0)


def test_length_grouped_sampler_eval_order_and_drop_last():
    lengths = [3, 9, 1, 7, 5]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=2, seed=0, shuffle=False)
    assert list(sampler) == [[1, 3], [4, 0], [2]]  # longest first, no shuffling
    dropping = LengthGroupedBatchSampler(lengths, batch_size=2, seed=0, drop_last=True)
    batches = list(dropping)
    assert len(batches) == len(dropping) == 2 and all(len(b) == 2 for b in batches)


def test_sampler_with_repeated_indices():
    sampler = LengthGroupedBatchSampler([1, 2, 3], batch_size=2, seed=0, indices=[0, 0, 1, 2, 2, 2])
    assert Counter(i for b in sampler for i in b) == {0: 2, 1: 1, 2: 3}


def test_oversample_indices_balances_classes():
    labels = [0] * 10 + [1] * 3 + [2] * 1
    indices = oversample_indices(labels, seed=0)
    counts = Counter(labels[i] for i in indices)
    assert counts == {0: 10, 1: 10, 2: 10}
    assert set(range(14)) <= set(indices)  # every original row kept
    assert oversample_indices(labels, seed=0) == indices
    assert oversample_indices([0, 1, 0, 1], seed=0) == [0, 1, 2, 3]


def test_class_weights_inverse_frequency():
    weights = class_weights([0, 0, 0, 1], num_labels=2)
    assert torch.allclose(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    # a class that never occurs does not divide by zero
    assert torch.isfinite(class_weights([0, 0], num_labels=3)).all()
    balanced = class_weights([0, 1, 2, 0, 1, 2], num_labels=3)
    assert torch.allclose(balanced, torch.ones(3))


def test_collate_pads_and_carries_labels_and_index(tiny_model_factory):
    tokenizer = load_tokenizer(tiny_model_factory("bert"))
    texts = ["fire", SAMPLE_TEXTS[1], "the beach"]
    dataset = EncodedDataset(encode(tokenizer, texts, max_length=32), labels=[1, 0, 1])
    collate = make_collator(tokenizer)
    batch = collate([dict(dataset[i]) for i in (2, 0, 1)])
    lengths = dataset.lengths()
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["labels"].tolist() == [1, 1, 0]
    assert batch["index"].tolist() == [2, 0, 1]
    assert batch["attention_mask"].sum(1).tolist() == [lengths[2], lengths[0], lengths[1]]
    pad = tokenizer.pad_token_id
    assert (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    unlabelled = EncodedDataset(encode(tokenizer, texts, max_length=4))
    batch = collate([dict(unlabelled[i]) for i in range(3)])
    assert "labels" not in batch and batch["input_ids"].shape[1] <= 4


def test_preprocess_table_keyword_step_uses_keyword_column(kaggle_csv):
    table = preprocess_table(load_table(kaggle_csv), ["keyword", "whitespace"])
    assert table.texts[0] == "keyword: ablaze | Forest fire near La Ronge"
    assert table.texts[1] == 'Flood warning, evacuate "now" stay safe'  # no empty keyword prefix
    assert table.texts[2] == "I love fruits"
    # no steps: the table is untouched
    raw = load_table(kaggle_csv)
    assert preprocess_table(raw, []).texts[1] == MULTILINE


def test_shared_data_is_found_beside_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    from conftest import REPO_ROOT

    from distilprune.data.corpus import default_corpus
    from distilprune.data.shared import SHARED_DATA_ENV, shared_data_dir

    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    beside_checkout = REPO_ROOT.parent / "shared" / "data"
    monkeypatch.chdir(tmp_path)  # ../shared/data of this directory does not exist
    if beside_checkout.is_dir():
        assert shared_data_dir() == beside_checkout
    else:
        assert shared_data_dir() == tmp_path.parent / "shared" / "data"
    mine = tmp_path / "mine"
    (mine / "sst2").mkdir(parents=True)
    (mine / "sst2" / "train.tsv").write_text("sentence\tlabel\nfine words here\t1\n")
    monkeypatch.setenv(SHARED_DATA_ENV, str(mine))
    assert shared_data_dir() == mine and default_corpus() == [mine / "sst2" / "train.tsv"]
