"""Structured shrinking: removing zero-importance heads/neurons keeps outputs; reload works."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification

from distilprune.errors import UserError
from distilprune.shrink import (
    LAYOUTS,
    encoder_layers,
    head_importance,
    load_shrunk,
    prune_heads_and_neurons,
)

HIDDEN, HEAD_SIZE, FFN = 32, 16, 64


def _load(path) -> nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(path).float().eval()


def _ids() -> torch.Tensor:
    return torch.randint(5, 60, (4, 11), generator=torch.Generator().manual_seed(3))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids(), attention_mask=torch.ones(4, 11, dtype=torch.long)).logits


def _zero_head(model, layer: int, head: int) -> None:
    parts = LAYOUTS[model.config.model_type]
    block = encoder_layers(model)[layer]
    rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
    with torch.no_grad():
        for key in ("q", "k", "v"):
            block.get_submodule(parts[key]).weight[rows] = 0
        block.get_submodule(parts["o"]).weight[:, rows] = 0


def _zero_neurons(model, count: int) -> list[torch.Tensor]:
    parts = LAYOUTS[model.config.model_type]
    chosen = []
    with torch.no_grad():
        for index, block in enumerate(encoder_layers(model)):
            neurons = torch.randperm(FFN, generator=torch.Generator().manual_seed(index))[:count]
            block.get_submodule(parts["ffn_in"]).weight[neurons] = 0
            block.get_submodule(parts["ffn_out"]).weight[:, neurons] = 0
            chosen.append(neurons)
    return chosen


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_removing_zero_heads_keeps_outputs(arch, tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory(arch, 2))
    _zero_head(model, 0, 1)
    _zero_head(model, 1, 0)
    before, params = _logits(model), sum(p.numel() for p in model.parameters())
    report = prune_heads_and_neurons(model, head_fraction=0.5)
    assert report.heads_removed == {0: [1], 1: [0]}
    assert model.config.pruned_heads == {"0": [1], "1": [0]}
    removed = 2 * (3 * (HIDDEN * HEAD_SIZE + HEAD_SIZE) + HIDDEN * HEAD_SIZE)
    assert report.params_before - report.params_after == removed == params - sum(
        p.numel() for p in model.parameters())
    assert torch.allclose(_logits(model), before, atol=1e-6)
    model.save_pretrained(tmp_path / "shrunk")
    reloaded = load_shrunk(tmp_path / "shrunk")
    assert torch.equal(_logits(reloaded), _logits(model))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_removing_zero_neurons_keeps_outputs(arch, tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory(arch, 2))
    chosen = _zero_neurons(model, 16)
    before = _logits(model)
    report = prune_heads_and_neurons(model, neuron_fraction=0.25)
    assert report.neurons_removed_per_layer == 16
    assert report.params_before - report.params_after == 2 * 16 * (2 * HIDDEN + 1)
    parts = LAYOUTS[arch]
    for block in encoder_layers(model):
        assert block.get_submodule(parts["ffn_in"]).out_features == FFN - 16
        assert block.get_submodule(parts["ffn_out"]).in_features == FFN - 16
    assert torch.allclose(_logits(model), before, atol=1e-6)
    assert len(chosen) == 2
    model.save_pretrained(tmp_path / "shrunk")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "shrunk").eval()
    assert torch.equal(_logits(plain), _logits(model))
    assert torch.equal(_logits(load_shrunk(tmp_path / "shrunk")), _logits(model))


def test_heads_then_neurons_and_repeated_head_pruning(tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory("bert", 4))
    prune_heads_and_neurons(model, head_fraction=0.25, neuron_fraction=0.5)
    first = {int(k): v for k, v in model.config.pruned_heads.items()}
    assert sum(len(v) for v in first.values()) == 2
    assert model.config.intermediate_size == 32
    prune_heads_and_neurons(model, head_fraction=0.34)
    second = {int(k): v for k, v in model.config.pruned_heads.items()}
    assert sum(len(v) for v in second.values()) == 4
    assert all(len(v) <= 1 for v in second.values())
    assert all(set(first.get(k, [])) <= set(v) for k, v in second.items())
    model.save_pretrained(tmp_path / "m")
    assert torch.equal(_logits(load_shrunk(tmp_path / "m")), _logits(model))


def test_explicit_scores_choose_what_goes(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    heads = [torch.tensor([5.0, 1.0]), torch.tensor([2.0, 3.0])]
    neurons = [torch.arange(FFN, 0, -1).float(), torch.arange(FFN).float()]
    layer1_ffn = encoder_layers(model)[1].intermediate.dense.weight.detach().clone()
    report = prune_heads_and_neurons(model, 0.25, 0.5, scores={"heads": heads, "neurons": neurons})
    assert report.heads_removed == {0: [1]}
    assert torch.equal(encoder_layers(model)[1].intermediate.dense.weight, layer1_ffn[32:])
    with pytest.raises(UserError):
        prune_heads_and_neurons(model, 0.25, scores={"heads": [torch.ones(3)]})


def test_importance_ranks_zeroed_heads_lowest(tiny_model_factory):
    model = _load(tiny_model_factory("distilbert", 2))
    _zero_head(model, 1, 1)
    scores = head_importance(model)
    assert scores[1][1] == 0 and scores[1][0] > 0 and (scores[0] > 0).all()


@pytest.mark.parametrize("arch", ["mpnet", "xlnet"])
def test_head_removal_unsupported_arch(arch, tiny_model_factory):
    model = _load(tiny_model_factory(arch, 2))
    with pytest.raises(UserError, match="not supported"):
        prune_heads_and_neurons(model, head_fraction=0.5)


def test_rejects_unknown_arch_bad_fractions_and_masks(tiny_model_factory):
    from transformers import GPT2Config

    gpt2 = AutoModelForSequenceClassification.from_config(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=16))
    with pytest.raises(UserError, match="does not support"):
        prune_heads_and_neurons(gpt2, neuron_fraction=0.5)
    model = _load(tiny_model_factory("bert", 2))
    with pytest.raises(UserError):
        prune_heads_and_neurons(model, head_fraction=1.0)
    parametrize.register_parametrization(model.classifier, "weight", nn.Identity())
    with pytest.raises(UserError, match="parametrization"):
        prune_heads_and_neurons(model, neuron_fraction=0.5)
