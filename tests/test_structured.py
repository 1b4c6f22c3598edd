"""Structured Prune OFA: head/neuron masks on the cubic schedule, removal, jobs and recipes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, SAMPLE_TEXTS

from distilprune.config import from_dict
from distilprune.errors import UserError
from distilprune.jobs.common import DataConfig
from distilprune.jobs.distill import (
    CorpusConfig,
    GeneralDistillConfig,
    MLMHeadConfig,
    fit_mlm_head,
    general_distill,
)
from distilprune.jobs.finetune import FinetuneConfig, finetune
from distilprune.models import load_classifier, load_tokenizer
from distilprune.models.loading import count_parameters, load_masked_lm
from distilprune.prune import (
    PruneConfig,
    PruningHook,
    attach_structured_masks,
    finalize,
    has_masks,
    lock_sparsity,
    remove_pruned,
    update_structured_masks,
)
from distilprune.shrink import HEADS_KEY, LAYOUTS, encoder_layers
from distilprune.train import Hook, TrainConfig, train

LAYERS, HEADS, HEAD_SIZE, HIDDEN, FFN = 4, 2, 16, 32, 64
STRUCTURED = {"method": "structured", "heads": 0.25, "neurons": 0.5, "end_fraction": 0.5,
              "frequency": 1}


def objective(model, batch):
    out = model(**batch)
    return out.loss, {"loss": out.loss.item()}


def batches(model_dir, n: int = 2) -> list[dict[str, torch.Tensor]]:
    enc = load_tokenizer(model_dir)(SAMPLE_TEXTS[:4], padding=True, return_tensors="pt")
    return [{**enc, "labels": torch.tensor([1, 0, 1, 0])} for _ in range(n)]


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def dead_units(model) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """``(layer, head)`` whose Q/K/V rows, biases and output columns are all zero, and
    ``(layer, neuron)`` whose FFN input row, bias and output column are all zero."""
    parts, heads, neurons = LAYOUTS[model.config.model_type], set(), set()
    for index, layer in enumerate(encoder_layers(model)):
        ffn_in, ffn_out = layer.get_submodule(parts["ffn_in"]), layer.get_submodule(parts["ffn_out"])
        dead = (ffn_in.weight == 0).all(1) & (ffn_in.bias == 0) & (ffn_out.weight == 0).all(0)
        neurons |= {(index, int(i)) for i in dead.nonzero().flatten()}
        if "q" in parts:
            rows = torch.stack([torch.cat([layer.get_submodule(parts[k]).weight,
                                           layer.get_submodule(parts[k]).bias[:, None]], 1)
                                for k in "qkv"])
            cols = layer.get_submodule(parts["o"]).weight.t()
            dead = ((rows == 0).all(0).all(1) & (cols == 0).all(1)).view(-1, HEAD_SIZE).all(1)
            heads |= {(index, int(h)) for h in dead.nonzero().flatten()}
    return heads, neurons


def zero_units(model) -> tuple[int, list[int]]:
    """Number of dead heads, dead neurons per layer (see :func:`dead_units`)."""
    heads, neurons = dead_units(model)
    return len(heads), [sum(1 for layer, _ in neurons if layer == i)
                        for i in range(len(encoder_layers(model)))]


class Spy(Hook):
    """Records the zero heads / neurons after every step (after the pruning hook ran)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[int]]] = []

    def on_step_end(self, model, step: int) -> None:
        self.seen.append(zero_units(model))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_structured_prune_during_training_then_remove(arch, tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory(arch, LAYERS)
    model, data = load_classifier(model_dir), batches(model_dir)
    heads = 0.25 if arch in HEADS_KEY else 0.0
    hook, spy = PruningHook(PruneConfig(**{**STRUCTURED, "heads": heads}), finalize_on_end=False), Spy()
    train(model, data * 3, objective, TrainConfig(max_steps=6, lr=1e-2, warmup_ratio=0.0, patience=None),
          hooks=[hook, spy])
    history = hook.sparsifier.history
    assert hook.sparsifier.end_step == 3 and [s for s, _ in history] == [0, 1, 2, 3]
    assert history[-1][1] == 1.0 and not hook.ready_for_selection(2)
    # masked structures are exactly zero, only grow with the schedule and reach the targets
    expected_heads = round(heads * LAYERS * HEADS)
    assert spy.seen[-1] == (expected_heads, [FFN // 2] * LAYERS)
    assert spy.seen[0] != spy.seen[-1]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(spy.seen, spy.seen[1:], strict=False))
    finalize(model)
    assert not has_masks(model) and zero_units(model) == spy.seen[-1]
    before, params = logits(model, data[0]), count_parameters(model)
    report = remove_pruned(model)
    assert report.neurons_removed_per_layer == FFN // 2
    assert sum(len(v) for v in report.heads_removed.values()) == expected_heads
    removed = LAYERS * (FFN // 2) * (2 * HIDDEN + 1) + expected_heads * (4 * HIDDEN + 3) * HEAD_SIZE
    assert params - count_parameters(model) == removed == report.params_before - report.params_after
    assert torch.allclose(logits(model, data[0]), before, atol=1e-5)
    model.save_pretrained(tmp_path / "shrunk")
    load_tokenizer(model_dir).save_pretrained(tmp_path / "shrunk")
    reloaded = load_classifier(tmp_path / "shrunk")
    assert count_parameters(reloaded) == count_parameters(model)
    assert torch.allclose(logits(reloaded, data[0]), before, atol=1e-5)


def test_pruned_units_stay_pruned_and_stack_on_locked_zeros(tiny_model_factory):
    model = load_classifier(tiny_model_factory("bert", 2))
    dense = model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        dense.weight[:, 0] = 0  # a sparse model: lock its zeros, then prune structures on top
    lock_sparsity(model)
    assert attach_structured_masks(model) == 2 * (3 * 2 + 1 + 2 + 1)
    first = update_structured_masks(model, 0.25, 0.25)
    assert first == {"heads": 1, "neurons": 16}
    heads, neurons = dead_units(model)
    with torch.no_grad():  # the originals of pruned units change; their masks keep them off
        for p in model.parameters():
            p.add_(1.0)
    assert update_structured_masks(model, 0.5, 0.5) == {"heads": 2, "neurons": 32}
    more_heads, more_neurons = dead_units(model)
    assert heads < more_heads and neurons < more_neurons
    assert bool((dense.weight[:, 0] == 0).all())  # the locked zeros survive too
    assert zero_units(model) == (2, [32, 32])


@pytest.mark.parametrize("arch", ["mpnet", "xlnet"])
def test_heads_unsupported_for_mpnet_and_xlnet(arch, tiny_model_factory):
    model = load_classifier(tiny_model_factory(arch, 2))
    with pytest.raises(UserError, match="neurons only"):
        PruningHook(PruneConfig(method="structured", heads=0.25)).on_train_begin(model, 10)


@pytest.mark.parametrize("kwargs", [
    {"method": "structured"}, {"method": "structured", "heads": 1.0},
    {"method": "structured", "neurons": -0.1}, {"method": "unstructured", "heads": 0.25},
    {"method": "block", "neurons": 0.5},
])
def test_structured_config_validation(kwargs):
    with pytest.raises(UserError):
        PruneConfig(**kwargs)


def test_recipes_accept_structured_prune_and_reject_unknown_keys():
    prune = {"method": "structured", "heads": 0.25, "neurons": 0.5}
    for cls in (GeneralDistillConfig, FinetuneConfig):
        cfg = from_dict(cls, {"prune": prune})
        assert (cfg.prune.method, cfg.prune.heads, cfg.prune.neurons) == ("structured", 0.25, 0.5)
        with pytest.raises(UserError, match="unknown key 'head'"):
            from_dict(cls, {"prune": {**prune, "head": 0.25}})
        with pytest.raises(UserError, match="structured"):
            from_dict(cls, {"prune": {"method": "structured"}})


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_general_distill_prunes_structure_and_finetune_keeps_it(arch, tiny_model_factory, tiny_csv,
                                                                 tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILPRUNE_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{SAMPLE_TEXTS[i % 8]} line {i}\n" for i in range(80)))
    texts = CorpusConfig(files=[str(corpus)], max_length=32)
    small = {"batch_size": 8, "patience": None}
    mlm, student, tuned = tmp_path / "mlm", tmp_path / "student", tmp_path / "tuned"
    fit_mlm_head(MLMHeadConfig(teacher=str(tiny_model_factory(arch, LAYERS)), out=str(mlm), corpus=texts,
                               train=TrainConfig(max_steps=2, lr=1e-3, **small)))
    summary = general_distill(GeneralDistillConfig(
        teacher=str(mlm), out=str(student), student_layers=2, corpus=texts,
        train=TrainConfig(max_steps=4, lr=1e-3, **small),
        prune=PruneConfig(method="structured", heads=0.25, neurons=0.5)))
    assert summary["shrink"]["neurons_removed_per_layer"] == FFN // 2
    assert sum(len(v) for v in summary["shrink"]["heads_removed"].values()) == 1
    assert summary["parameters"] == summary["shrink"]["params_after"] < summary["shrink"]["params_before"]
    config = json.loads((student / "config.json").read_text())
    ffn_key = "hidden_dim" if arch == "distilbert" else "intermediate_size"
    assert config[ffn_key] == FFN // 2 and sum(map(len, config["pruned_heads"].values())) == 1
    masked_lm, head_fitted = load_masked_lm(student)
    assert head_fitted and count_parameters(masked_lm.base_model) == count_parameters(
        load_classifier(student).base_model) - (HIDDEN + 1) * HIDDEN * (arch == "bert")  # bert pooler

    result = finetune(FinetuneConfig(model=str(student), out=str(tuned), data=DataConfig(
        train=str(tiny_csv), max_length=32), train=TrainConfig(max_steps=3, lr=1e-3, **small)))
    assert json.loads((tuned / "config.json").read_text())["pruned_heads"] == config["pruned_heads"]
    model = load_classifier(tuned)
    assert count_parameters(model) == result["parameters"] and "shrink" not in result


def test_finetune_with_structured_pruning_saves_the_smaller_model(tiny_model_factory, tiny_csv, tmp_path):
    model_dir, out = tiny_model_factory("roberta", 2), tmp_path / "pruned"
    result = finetune(FinetuneConfig(
        model=str(model_dir), out=str(out), data=DataConfig(train=str(tiny_csv), max_length=32),
        train=TrainConfig(max_steps=4, lr=1e-3, batch_size=8, patience=None),
        prune=PruneConfig(**STRUCTURED)))
    assert result["shrink"]["neurons_removed_per_layer"] == FFN // 2
    assert result["parameters"] < count_parameters(load_classifier(model_dir))
    model = load_classifier(out)
    assert count_parameters(model) == result["parameters"]
    assert model.config.intermediate_size == FFN // 2 and model.config.pruned_heads


def test_structured_pruning_resumes_like_an_uninterrupted_run(tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory("distilbert", 2)
    data = batches(model_dir) * 3

    class Crash(Hook):
        def on_step_end(self, model, step: int) -> None:
            if step == 3:
                raise RuntimeError("killed")

    def run(name: str, resume: bool = False, crash: bool = False):
        model = load_classifier(model_dir)
        cfg = TrainConfig(max_steps=6, lr=1e-2, patience=None, checkpoint_every=2,
                          checkpoint_dir=str(tmp_path / name), resume=resume)
        train(model, data, objective, cfg, [PruningHook(PruneConfig(**STRUCTURED)), *[Crash()] * crash])
        return model

    full = run("full")
    with pytest.raises(RuntimeError, match="killed"):
        run("cut", crash=True)
    resumed = run("cut", resume=True)
    assert zero_units(resumed) == zero_units(full) == (1, [FFN // 2] * 2)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
