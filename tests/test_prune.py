"""Pruning: schedules, masks, parametrized masks on every architecture, hooks and reports."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import ARCHITECTURES, SAMPLE_TEXTS
from rich.table import Table

from distilprune.errors import UserError
from distilprune.models import load_classifier, load_tokenizer
from distilprune.prune import (
    GradualSparsifier,
    LockSparsityHook,
    PruneConfig,
    PruningHook,
    attach_masks,
    block_magnitude_mask,
    compute_mask,
    cubic_sparsity,
    current_masks,
    detect_block_pattern,
    finalize,
    global_masks,
    has_masks,
    is_update_step,
    lock_sparsity,
    magnitude_mask,
    prunable_parameters,
    sparsity_report,
    update_masks,
    write_sparsity_json,
)
from distilprune.prune.activations import InputNorms
from distilprune.reporting.sparsity import plot_sparsity_heatmap, sparsity_table
from distilprune.train import TrainConfig, train

LAYERS = 2
KINDS_PER_LAYER = {"bert": 6, "roberta": 6, "distilbert": 6, "mpnet": 6, "xlnet": 7}


def objective(model, batch):
    out = model(**batch)
    return out.loss, {"loss": out.loss.item()}


def make_batches(model_dir, n: int = 2) -> list[dict[str, torch.Tensor]]:
    tokenizer = load_tokenizer(model_dir)
    batches = []
    for i in range(n):
        texts = SAMPLE_TEXTS[4 * i: 4 * i + 4]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": torch.tensor([1, 0, 1, 0])})
    return batches


def zero_patterns(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() == 0 for name, p in model.named_parameters()}


# --- schedules ---------------------------------------------------------------------------------


def test_cubic_schedule_endpoints_and_monotone():
    kw = {"initial": 0.1, "final": 0.9, "start_step": 10, "end_step": 110}
    assert cubic_sparsity(0, **kw) == 0.1
    assert cubic_sparsity(10, **kw) == 0.1
    assert cubic_sparsity(110, **kw) == 0.9
    assert cubic_sparsity(500, **kw) == 0.9
    assert cubic_sparsity(60, **kw) == pytest.approx(0.9 - 0.8 * 0.5**3)
    values = [cubic_sparsity(s, **kw) for s in range(0, 130)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # cubic: most of the sparsity comes early
    assert cubic_sparsity(35, **kw) - 0.1 > 0.9 - cubic_sparsity(85, **kw)


def test_cubic_schedule_frequency_quantisation():
    kw = {"initial": 0.0, "final": 0.8, "start_step": 0, "end_step": 95, "frequency": 10}
    assert len({cubic_sparsity(s, **kw) for s in range(10, 20)}) == 1
    assert cubic_sparsity(19, **kw) == cubic_sparsity(10, **kw) < cubic_sparsity(20, **kw)
    assert cubic_sparsity(94, **kw) == cubic_sparsity(90, **kw) < cubic_sparsity(95, **kw) == 0.8
    # one-shot schedule: start == end
    assert cubic_sparsity(5, initial=0.0, final=0.5, start_step=5, end_step=5) == 0.5


def test_is_update_step():
    steps = [s for s in range(0, 40) if is_update_step(s, 5, 27, 10)]
    assert steps == [5, 15, 25, 27]


# --- masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_mask_exact_and_keeps_largest(sparsity):
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(weight, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    if sparsity > 0:
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_block_mask_zeroes_whole_input_blocks_and_keeps_largest(norm):
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    mask = block_magnitude_mask(weight, 0.5, block_size=4, norm=norm)
    blocks = mask.reshape(8, 4, 4)  # rows of a [out, in] weight, 4 consecutive inputs
    assert bool((blocks.all(-1) | ~blocks.any(-1)).all())
    assert int((~blocks.all(-1)).sum()) == 16
    ord_ = 1 if norm == "l1" else 2
    scores = weight.reshape(8, 4, 4).norm(p=ord_, dim=-1)
    kept = blocks.all(-1)
    assert scores[kept].min() >= scores[~kept].max()
    assert detect_block_pattern(weight * mask, 4)
    assert not detect_block_pattern(weight * magnitude_mask(weight, 0.5), 4)


def test_block_norm_choice_matters():
    # block 0: one large entry (high L2, low L1); block 1: spread entries (high L1, low L2)
    weight = torch.tensor([[3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert block_magnitude_mask(weight, 0.5, 4, "l2")[0].tolist() == [True] * 4 + [False] * 4
    assert block_magnitude_mask(weight, 0.5, 4, "l1")[0].tolist() == [False] * 4 + [True] * 4


def test_block_mask_ragged_tail_and_3d_input_first():
    weight = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    mask = block_magnitude_mask(weight, 0.5, block_size=4)
    assert mask.shape == weight.shape
    assert detect_block_pattern(weight * mask, 4)
    # XLNet q/k/v/r: [d_model, n_head, d_head], dim 0 is the input -> blocks along dim 0
    qkv = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(3))
    mask3 = compute_mask(qkv, 0.5, "block", 4, "l2", input_first=True)
    assert mask3.shape == qkv.shape
    along_input = mask3.reshape(8, 6).t().reshape(6, 2, 4)
    assert bool((along_input.all(-1) | ~along_input.any(-1)).all())
    assert int((~mask3).sum()) == 24


def test_compute_mask_rejects_unknown_method():
    with pytest.raises(UserError):
        compute_mask(torch.randn(4, 4), 0.5, "random")


@pytest.mark.parametrize("kwargs", [
    {"final_sparsity": 1.0}, {"initial_sparsity": -0.1}, {"method": "channels"},
    {"start_fraction": 0.8, "end_fraction": 0.5}, {"block_norm": "linf"}, {"frequency": 0},
    {"initial_sparsity": 0.6, "final_sparsity": 0.5}, {"scope": "network"}, {"criterion": "gradient"},
    {"method": "structured", "heads": 0.5, "criterion": "activation"},
])
def test_prune_config_validation(kwargs):
    with pytest.raises(UserError):
        PruneConfig(**kwargs)


def test_global_masks_one_threshold_across_tensors():
    torch.manual_seed(0)
    small, large = torch.randn(8, 16) * 0.1, torch.randn(8, 16)
    masks = global_masks([(small, False), (large, False)], 0.5)
    assert sum(int((~m).sum()) for m in masks) == 128  # exactly half of all 256 entries
    assert int((~masks[0]).sum()) > int((~masks[1]).sum())  # the small-scale tensor loses more
    kept = torch.cat([w[m].abs() for w, m in zip((small, large), masks, strict=True)])
    pruned = torch.cat([w[~m].abs() for w, m in zip((small, large), masks, strict=True)])
    assert kept.min() >= pruned.max()
    # the same tensors pruned one by one are each exactly half sparse
    assert all(int((~compute_mask(w, 0.5)).sum()) == 64 for w in (small, large))


def test_global_block_masks_keep_whole_blocks_and_input_first_layout():
    torch.manual_seed(0)
    plain, transposed = torch.randn(6, 8), torch.randn(8, 6) * 3
    masks = global_masks([(plain, False), (transposed, True)], 0.5, "block", 4)
    assert sum(int((~m).sum()) for m in masks) == 48
    assert detect_block_pattern(plain * masks[0], 4)
    assert detect_block_pattern(transposed * masks[1], 4, input_first=True)
    assert int((~masks[0]).sum()) > int((~masks[1]).sum())


@pytest.mark.parametrize("arch", ["bert", "xlnet"])
def test_global_scope_prunes_layers_unevenly_to_the_global_target(arch, tiny_model_factory):
    model = load_classifier(tiny_model_factory(arch, LAYERS))
    attach_masks(model)
    update_masks(model, 0.6, "unstructured", scope="global")
    masks = current_masks(model).values()
    assert sum(int((~m).sum()) for m in masks) == round(0.6 * sum(m.numel() for m in masks))
    assert len({round(float((~m).float().mean()), 3) for m in masks}) > 1
    with pytest.raises(UserError, match="scope"):
        update_masks(model, 0.6, scope="network")


# --- parametrized masks on every architecture ---------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_masks_forward_finalize_and_save_roundtrip(arch, tiny_model_factory, tmp_path):
    model_dir = tiny_model_factory(arch, LAYERS)
    model = load_classifier(model_dir).eval()
    dense = copy.deepcopy(model)
    names = [q for _, _, q in prunable_parameters(model)]
    assert len(names) == KINDS_PER_LAYER[arch] * LAYERS
    assert all(".layer." in n for n in names)
    assert not any(k in n.lower() for n in names for k in ("embed", "norm", "bias", "classifier"))
    if arch == "xlnet":
        assert {n.split(".")[-1] for n in names if "rel_attn" in n} == {"q", "k", "v", "o", "r"}

    attach_masks(model)
    update_masks(model, 0.5, "unstructured")
    masks = current_masks(model)
    assert sorted(masks) == sorted(names)
    assert all(int((~m).sum()) == m.numel() // 2 for m in masks.values())

    batch = make_batches(model_dir, 1)[0]
    batch.pop("labels")
    reference = copy.deepcopy(dense)
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
        got, expected, unmasked = (m(**batch, output_hidden_states=True).hidden_states[-1]
                                   for m in (model, reference, dense))
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - unmasked).abs().max() > 1e-3  # the masks really change the forward

    assert finalize(model) == len(names)
    assert not has_masks(model)
    assert set(model.state_dict()) == set(dense.state_dict())
    model.save_pretrained(tmp_path / "pruned")
    reloaded = load_classifier(tmp_path / "pruned")
    dense_params = dict(dense.named_parameters())
    for name, param in reloaded.named_parameters():
        if name in masks:
            assert torch.equal(param != 0, masks[name]), name
        else:
            assert torch.equal(param, dense_params[name]), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pruning_hook_reaches_target_during_training(arch, tiny_model_factory):
    model_dir = tiny_model_factory(arch, LAYERS)
    model = load_classifier(model_dir)
    hook = PruningHook(PruneConfig(method="block", final_sparsity=0.75, end_fraction=0.5,
                                   frequency=1))
    scores = iter([1.0 - 0.1 * i for i in range(100)])  # decreasing: first eligible eval wins
    cfg = TrainConfig(max_steps=6, lr=1e-3, warmup_ratio=0.0, eval_every=1, patience=None,
                      log_every=1)
    result = train(model, make_batches(model_dir), objective, cfg, hooks=[hook],
                   evaluate=lambda m: {"accuracy": next(scores)})
    sparsifier = hook.sparsifier
    assert (sparsifier.start_step, sparsifier.end_step) == (0, 3)
    assert sparsifier.current_sparsity == 0.75
    assert [s for s, _ in sparsifier.history] == [0, 1, 2, 3]
    assert [v for _, v in sparsifier.history] == sorted(v for _, v in sparsifier.history)
    assert not hook.ready_for_selection(2) and hook.ready_for_selection(3)
    assert result.best["step"] == 3  # never a half-pruned checkpoint
    assert not has_masks(model)  # finalized on train end
    report = sparsity_report(model)
    assert report["prunable"]["sparsity"] == pytest.approx(0.75)
    assert report["block_size"] >= 4


def test_gradual_sparsifier_works_in_a_plain_torch_loop(tiny_model_factory):
    """prepare / step / squash_mask, as torch.ao.pruning's sparsifiers: no distilprune loop needed."""
    model_dir = tiny_model_factory("bert", LAYERS)
    model = load_classifier(model_dir)
    sparsifier = GradualSparsifier(PruneConfig(method="block", final_sparsity=0.5, end_fraction=0.5,
                                               frequency=1))
    with pytest.raises(UserError, match="prepare"):
        sparsifier.step(0)  # before prepare(): no model to prune
    sparsifier.prepare(model, total_steps=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step, batch in enumerate(make_batches(model_dir) * 2, start=1):
        objective(model, batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
        sparsifier.step(step)
    assert sparsifier.history[-1] == (4, 0.5) and sparsifier.reached_final(4)
    assert sparsity_report(model)["prunable"]["sparsity"] == pytest.approx(0.5)
    sparsifier.squash_mask()
    assert not has_masks(model) and sparsity_report(model)["prunable"]["sparsity"] == pytest.approx(0.5)


def test_activation_criterion_keeps_small_weights_on_large_inputs():
    """Wanda: |w| x ||x_j||: a column whose input is 100x larger survives although its weights
    are the smallest, and magnitude pruning would remove it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    weight = torch.randn(4, 8).abs() + 1.0
    weight[:, 0] = 0.1
    model = torch.nn.Sequential(layer)
    x = torch.randn(32, 8)
    x[:, 0] *= 100.0
    for criterion, column_kept in (("magnitude", False), ("activation", True)):
        with torch.no_grad():
            layer.weight.copy_(weight)
        attach_masks(model, [(layer, "weight", "0.weight")])
        norms = InputNorms(model)
        model(x)
        assert set(norms.scales()) == {"0.weight"}
        assert torch.allclose(norms.scales()["0.weight"], x.pow(2).sum(0).sqrt())
        update_masks(model, 0.5, input_norms=norms.scales() if criterion == "activation" else None)
        norms.remove()
        mask = current_masks(model)["0.weight"]
        assert bool(mask[:, 0].all()) is column_kept, criterion
        assert int((~mask).sum()) == 16
        finalize(model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_activation_criterion_in_the_training_loop(arch, tiny_model_factory):
    """The gradual sparsifier with criterion=activation reaches its target on every architecture
    with masks that differ from magnitude pruning's, and leaves no hooks behind."""
    model_dir = tiny_model_factory(arch, LAYERS)
    masks = {}
    for criterion in ("magnitude", "activation"):
        torch.manual_seed(0)
        model = load_classifier(model_dir)
        sparsifier = GradualSparsifier(PruneConfig(method="block", final_sparsity=0.5, end_fraction=0.5,
                                                   frequency=1, criterion=criterion))
        sparsifier.prepare(model, total_steps=4)
        for step, batch in enumerate(make_batches(model_dir), start=1):
            objective(model, batch)
            sparsifier.step(step)
        assert sparsifier.input_norms is None  # hooks removed once the final sparsity is in place
        assert sparsity_report(model)["prunable"]["sparsity"] == pytest.approx(0.5, abs=0.01)
        masks[criterion] = current_masks(model)
        sparsifier.squash_mask()
        assert not any(module._forward_pre_hooks for module in model.modules())
    assert any(not torch.equal(masks["magnitude"][k], masks["activation"][k]) for k in masks["magnitude"])


@pytest.mark.parametrize("arch", ["bert", "xlnet"])
def test_lock_sparsity_keeps_zero_pattern(arch, tiny_model_factory):
    model_dir = tiny_model_factory(arch, LAYERS)
    model = load_classifier(model_dir)
    attach_masks(model)
    update_masks(model, 0.6)
    finalize(model)
    before = zero_patterns(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(max_steps=4, lr=1e-2, warmup_ratio=0.0, weight_decay=0.1, patience=None)
    unlocked = copy.deepcopy(model)

    hook = LockSparsityHook()
    train(model, make_batches(model_dir), objective, cfg, hooks=[hook])
    assert hook.locked == KINDS_PER_LAYER[arch] * LAYERS
    assert not has_masks(model)
    after = zero_patterns(model)
    targets = {q for _, _, q in prunable_parameters(model)}
    for name in targets:
        assert torch.equal(before[name], after[name]), name
        assert not torch.equal(weights[name], dict(model.named_parameters())[name]), name

    train(unlocked, make_batches(model_dir), objective, cfg)  # control: zeros do not survive
    control = zero_patterns(unlocked)
    assert any(not torch.equal(before[n], control[n]) for n in targets)


def test_lock_sparsity_skips_dense_and_respects_patterns(tiny_model_factory):
    model = load_classifier(tiny_model_factory("bert", LAYERS))
    assert lock_sparsity(model) == 0 and not has_masks(model)
    with torch.no_grad():
        model.classifier.weight[0, :3] = 0.0
        model.bert.encoder.layer[0].output.dense.weight[:, :5] = 0.0
    assert lock_sparsity(model, exclude=[r"layer\.0\."]) == 0
    assert lock_sparsity(model, include=[r"^classifier\.", r"output\.dense"]) == 2
    assert set(current_masks(model)) == {"classifier.weight",
                                         "bert.encoder.layer.0.output.dense.weight"}
    with pytest.raises(UserError):
        prunable_parameters(model, include=["("])


# --- reports -----------------------------------------------------------------------------------


def test_sparsity_report_json_heatmap_and_table(tiny_model_factory, tmp_path):
    model = load_classifier(tiny_model_factory("distilbert", LAYERS))
    total = sum(p.numel() for p in model.parameters())
    dense = sparsity_report(model)
    attach_masks(model)
    update_masks(model, 0.5)
    masked = sparsity_report(model)
    assert masked["masked"] and masked["block_size"] == 1
    assert len(masked["tensors"]) == 6 * LAYERS
    assert [layer["layer"] for layer in masked["layers"]] == list(range(LAYERS))
    assert all(layer["sparsity"] == 0.5 for layer in masked["layers"])
    prunable = masked["prunable"]
    assert prunable["zeros"] == prunable["numel"] // 2 and prunable["sparsity"] == 0.5
    assert masked["all"]["numel"] == total
    assert masked["all"]["zeros"] == dense["all"]["zeros"] + prunable["zeros"]
    assert 0 < masked["all"]["sparsity"] < 0.5
    q = masked["tensors"][0]
    assert q["name"] == "distilbert.transformer.layer.0.attention.q_lin.weight"
    assert (q["layer"], q["kind"], q["shape"], q["zeros"]) == (0, "attention.q_lin", [32, 32], 512)

    finalize(model)
    final = sparsity_report(model)
    assert not final["masked"]
    assert final["tensors"] == masked["tensors"] and final["all"] == masked["all"]

    write_sparsity_json(final, tmp_path / "sparsity.json")
    assert json.loads((tmp_path / "sparsity.json").read_text())["prunable"]["sparsity"] == 0.5
    plot_sparsity_heatmap(final, tmp_path / "plots" / "sparsity.png")
    assert (tmp_path / "plots" / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = sparsity_table(final)
    assert isinstance(table, Table) and table.row_count == LAYERS
    assert len(table.columns) == 6 + 2
