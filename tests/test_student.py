"""Students built from tiny teachers of every architecture keep the selected teacher layers."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    XLNetLMHeadModel,
)

from distilprune.errors import UserError
from distilprune.models.loading import count_parameters
from distilprune.models.student import (
    build_student,
    copied_from,
    default_layer_map,
    num_layers_of,
    parse_layer_map,
    validate_layer_map,
)
from distilprune.models.tiny import tiny_config


@pytest.fixture(scope="module")
def teachers(tiny_model_factory):
    """Loaded 4-layer tiny classifiers keyed by architecture."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = AutoModelForSequenceClassification.from_pretrained(
                tiny_model_factory(arch)).eval()
        return cache[arch]

    return get


def assert_copied(student, teacher, layer_map: list[int]) -> None:
    """Every student tensor equals its teacher source; layer keys are remapped."""
    source = teacher.state_dict()
    state = student.state_dict()
    remapped = 0
    for key, tensor in state.items():
        teacher_key = copied_from(key, layer_map)
        remapped += teacher_key != key
        assert torch.equal(tensor, source[teacher_key]), key
    assert remapped > 0
    for i, j in enumerate(layer_map):  # explicit: layer i's first tensor is teacher layer j's
        key = next(k for k in state if f".layer.{i}." in k)
        assert torch.equal(state[key], source[key.replace(f".layer.{i}.", f".layer.{j}.")])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(
    ("layer_map", "expected"), [(None, [0, 2]), ([1, 3], [1, 3]), ("0,1,3", [0, 1, 3])])
def test_student_copies_teacher_layers(teachers, arch, layer_map, expected):
    teacher = teachers(arch)
    student = build_student(teacher, layer_map)
    assert type(student) is type(teacher)
    assert num_layers_of(student) == len(expected)
    assert student.config.hidden_size == teacher.config.hidden_size
    assert num_layers_of(teacher) == 4  # teacher config untouched
    assert count_parameters(student) < count_parameters(teacher)
    assert not student.training
    assert_copied(student, teacher, expected)
    names = set(student.state_dict())
    if arch == "mpnet":
        assert "mpnet.encoder.relative_attention_bias.weight" in names
    if arch == "xlnet":
        assert "transformer.mask_emb" in names
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_student_with_all_layers_matches_teacher(teachers):
    teacher = teachers("bert")
    student = build_student(teacher, [0, 1, 2, 3])
    ids = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["bert", "mpnet", "distilbert", "xlnet"])
def test_student_of_lm_head_model(arch):
    torch.manual_seed(0)
    config = tiny_config(arch, vocab_size=40, num_layers=4)
    if arch == "xlnet":
        teacher = XLNetLMHeadModel(config)
    else:
        teacher = AutoModelForMaskedLM.from_config(config)
    student = build_student(teacher, num_layers=2)
    assert type(student) is type(teacher) and num_layers_of(student) == 2
    assert_copied(student, teacher, [0, 2])
    out = student.get_output_embeddings().weight
    assert out.data_ptr() == student.get_input_embeddings().weight.data_ptr()  # still tied
    assert out.data_ptr() != teacher.get_output_embeddings().weight.data_ptr()  # not shared
    logits = student(input_ids=torch.tensor([[2, 5, 6, 3]])).logits
    assert logits.shape == (1, 4, 40)
    logits.sum().backward()
    assert teacher.get_input_embeddings().weight.grad is None


def test_default_and_parsed_layer_maps():
    assert default_layer_map(12) == [0, 2, 4, 6, 8, 10]
    assert default_layer_map(6) == [0, 2, 4]
    assert default_layer_map(12, 4) == [0, 3, 6, 9]
    assert default_layer_map(12, 5) == [0, 2, 4, 7, 9]
    assert default_layer_map(1) == [0]
    assert parse_layer_map("0,2,4,7,9,11") == [0, 2, 4, 7, 9, 11]
    assert parse_layer_map(" 1, 3 ") == [1, 3]
    assert validate_layer_map([0, 2, 4, 7, 9, 11], 12) == [0, 2, 4, 7, 9, 11]


@pytest.mark.parametrize(
    ("layer_map", "message"),
    [("", "empty"), ("0,4", "out of range"), ("-1,2", "out of range"),
     ("0,0,2", "repeats"), ("0,two", "integers")],
)
def test_bad_layer_maps(teachers, layer_map, message):
    with pytest.raises(UserError, match=message):
        build_student(teachers("bert"), layer_map)


def test_bad_layer_counts(teachers):
    with pytest.raises(UserError, match="1..4 layers"):
        build_student(teachers("bert"), num_layers=5)
    with pytest.raises(UserError, match="does not match"):
        build_student(teachers("bert"), [0, 2], num_layers=3)
