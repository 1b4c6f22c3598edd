"""QAT through the training loop, sparsity preservation, and post-training int8 baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHITECTURES, SAMPLE_TEXTS
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distilprune.errors import UserError
from distilprune.quantize import (
    QATConfig,
    QATHook,
    dynamic_quantize,
    finalize_qat,
    prepare_qat,
    quantizable_linears,
)
from distilprune.quantize.qat import InputFakeQuant, is_qat_prepared
from distilprune.train import TrainConfig, train


def _load(path) -> nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(path).float()


def _batches(path, n: int = 4) -> list[dict[str, torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = []
    for i in range(n):
        texts = [SAMPLE_TEXTS[(2 * i + j) % len(SAMPLE_TEXTS)] for j in range(4)]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                    "labels": torch.tensor([j % 2 for j in range(4)])})
    return out


def _objective(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits, batch["labels"])
    return loss, {"loss": loss.item()}


def _train(model, batches, hooks, steps: int = 4):
    scores = iter(range(100))
    cfg = TrainConfig(max_steps=steps, lr=1e-3, warmup_ratio=0.0, eval_every=2, patience=None,
                      log_every=1)
    return train(model, batches, _objective, cfg, hooks=hooks,
                 evaluate=lambda m: {"accuracy": float(next(scores))}, description="qat-test")


def _assert_on_grid(model, scales) -> None:
    assert scales, "finalize_qat returned no layers"
    for name, info in scales.items():
        weight = model.get_submodule(name).weight.detach()
        ratio = weight / info["weight_scale"][:, None]
        assert (ratio - ratio.round()).abs().max() < 1e-4, name
        assert ratio.abs().max() <= 127 + 1e-4, name


def _zero_half(model) -> dict[str, torch.Tensor]:
    zeros = {}
    with torch.no_grad():
        for name, module in quantizable_linears(model).items():
            mask = torch.rand_like(module.weight) < 0.5
            module.weight[mask] = 0.0
            zeros[name] = mask
    return zeros


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return weight * self.mask


def _lock(model) -> None:
    """The prune module's ``lock_sparsity`` when available, else a simple fixed mask."""
    try:
        from distilprune.prune import lock_sparsity
    except ImportError:
        for module in quantizable_linears(model).values():
            mask = (module.weight != 0).float()
            parametrize.register_parametrization(module, "weight", _Mask(mask))
        return
    lock_sparsity(model)


def _bake_masks(model) -> None:
    try:
        from distilprune.prune import finalize
    except ImportError:
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        return
    finalize(model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_qat_trains_and_finalizes_on_int8_grid(arch, tiny_model_factory, tmp_path):
    path = tiny_model_factory(arch, 2)
    model = _load(path)
    plain_keys = set(model.state_dict())
    before = {n: m.weight.detach().clone() for n, m in quantizable_linears(model).items()}
    hook = QATHook(QATConfig())
    _train(model, _batches(path), [hook])
    assert not is_qat_prepared(model)
    assert set(model.state_dict()) == plain_keys
    _assert_on_grid(model, hook.scales)
    assert set(hook.scales) == set(before)
    assert all(info["input_scale"] is not None for info in hook.scales.values())
    assert any(not torch.equal(before[n], model.get_submodule(n).weight) for n in before)
    model.save_pretrained(tmp_path / "qat")
    reloaded = _load(tmp_path / "qat").eval()
    ids = _batches(path, 1)[0]["input_ids"]
    assert torch.equal(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["bert", "xlnet"])
def test_qat_keeps_pruned_weights_zero(arch, tiny_model_factory):
    torch.manual_seed(0)
    path = tiny_model_factory(arch, 2)
    model = _load(path)
    zeros = _zero_half(model)
    _lock(model)
    hook = QATHook(QATConfig(activation_symmetric=True, activation_dtype="int8"))
    _train(model, _batches(path), [hook])
    _bake_masks(model)
    _assert_on_grid(model, hook.scales)
    _assert_zeros_kept(model, zeros)


def _assert_zeros_kept(model, zeros) -> None:
    for name, mask in zeros.items():
        weight = model.get_submodule(name).weight
        assert not parametrize.is_parametrized(model.get_submodule(name))
        assert torch.count_nonzero(weight[mask]) == 0, name
        assert torch.count_nonzero(weight[~mask]) > 0.9 * int((~mask).sum()), name


@pytest.mark.parametrize("qat_first", [False, True])
def test_qat_with_lock_sparsity_hook_in_either_order(qat_first, tiny_model_factory):
    prune = pytest.importorskip("distilprune.prune")
    torch.manual_seed(0)
    path = tiny_model_factory("roberta", 2)
    model = _load(path)
    zeros = _zero_half(model)
    qat = QATHook()
    hooks = [qat, prune.LockSparsityHook()] if qat_first else [prune.LockSparsityHook(), qat]
    _train(model, _batches(path), hooks)
    assert not is_qat_prepared(model)
    _assert_on_grid(model, qat.scales)
    _assert_zeros_kept(model, zeros)


def test_mask_added_after_qat_still_bakes(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    zeros = _zero_half(model)
    prepare_qat(model)
    _lock(model)
    assert len(model.bert.encoder.layer[0].attention.self.query.parametrizations.weight) == 2
    model.train()(input_ids=torch.randint(5, 50, (2, 7)))
    scales = finalize_qat(model)
    _bake_masks(model)
    _assert_on_grid(model, scales)
    for name, mask in zeros.items():
        assert torch.count_nonzero(model.get_submodule(name).weight[mask]) == 0


def test_observers_freeze_and_only_learn_in_training(tiny_model_factory):
    path = tiny_model_factory("distilbert", 2)
    model = _load(path)
    hook = QATHook(QATConfig(freeze_observers_at=0.5), finalize=False)
    _train(model, _batches(path), [hook])
    assert hook.freeze_step == 2
    fakes = [m for m in model.modules() if isinstance(m, InputFakeQuant)]
    assert fakes and all(f.frozen and f.observed() for f in fakes)
    scale = fakes[0].fake_quant.scale.clone()
    model.train()(input_ids=torch.randint(5, 50, (2, 7)) * 0 + 7)
    assert torch.equal(fakes[0].fake_quant.scale, scale)
    finalize_qat(model)
    assert not any(isinstance(m, InputFakeQuant) for m in model.modules())


def test_qat_works_in_a_plain_torch_loop(tiny_model_factory):
    """prepare_qat / freeze_observers at observer_freeze_step / finalize_qat, as torch.ao's QAT
    prepare / convert: no distilprune loop needed (and the QAT module does not import it)."""
    import ast
    import inspect

    from distilprune.quantize import freeze_observers, observer_freeze_step, qat

    imports = {n.module for n in ast.walk(ast.parse(inspect.getsource(qat))) if isinstance(n, ast.ImportFrom)}
    assert "distilprune.train" not in imports
    path = tiny_model_factory("roberta", 2)
    model = _load(path)
    cfg = QATConfig(freeze_observers_at=0.5)
    batches = _batches(path)
    freeze_at = observer_freeze_step(cfg, len(batches))
    assert freeze_at == 2 and observer_freeze_step(QATConfig(), 4) is None
    prepare_qat(model, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fake = next(m for m in model.modules() if isinstance(m, InputFakeQuant))
    for step, batch in enumerate(batches, start=1):
        _objective(model.train(), batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == freeze_at:
            freeze_observers(model)
            frozen_scale = fake.fake_quant.scale.clone()
    assert torch.equal(fake.fake_quant.scale, frozen_scale)  # two more steps did not move it
    scales = finalize_qat(model)
    assert not is_qat_prepared(model)
    _assert_on_grid(model, scales)


def test_eval_forward_does_not_move_activation_ranges(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    prepare_qat(model)
    fake = next(m for m in model.modules() if isinstance(m, InputFakeQuant))
    ids = torch.randint(5, 50, (2, 7))
    model.eval()(input_ids=ids)
    assert not fake.observed()
    model.train()(input_ids=ids)
    assert fake.observed()
    scale = fake.fake_quant.scale.clone()
    model.eval()(input_ids=ids * 0 + 9)
    assert torch.equal(fake.fake_quant.scale, scale)


@pytest.mark.parametrize("kwargs", [{"activation_dtype": "fp8"}, {"averaging_constant": 0.0},
                                    {"freeze_observers_at": 1.5}])
def test_qat_config_validation(kwargs):
    with pytest.raises(UserError):
        QATConfig(**kwargs)


def test_prepare_twice_and_finalize_unprepared_fail(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    with pytest.raises(UserError):
        finalize_qat(model)
    prepare_qat(model)
    with pytest.raises(UserError):
        prepare_qat(model)


def test_selection_skips_embeddings_and_head(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    names = set(quantizable_linears(model))
    assert len(names) == 12
    assert "classifier" not in names and "bert.pooler.dense" not in names
    assert "classifier" in quantizable_linears(model, include_head=True)


def _confident(model) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for module in quantizable_linears(model, include_head=True).values():
            module.weight.normal_(0, 0.3)
    return model.eval()


def test_dynamic_quantize_agrees_with_fp32(tiny_model_factory):
    model = _confident(_load(tiny_model_factory("bert", 2)))
    quantized = dynamic_quantize(model)
    assert isinstance(model.classifier, nn.Linear)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert isinstance(quantized.classifier, DynamicLinear)
    assert isinstance(quantized.bert.encoder.layer[0].attention.self.query, DynamicLinear)
    ids = torch.randint(5, 60, (64, 10))
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.9
    assert not torch.equal(ref, out)


def test_dynamic_quantize_is_lossless_for_qat_weights(tiny_model_factory):
    model = _load(tiny_model_factory("mpnet", 2))
    prepare_qat(model)
    model.train()(input_ids=torch.randint(5, 50, (2, 7)))
    scales = finalize_qat(model)
    quantized = dynamic_quantize(model.eval())
    for name in scales:
        dequantized = quantized.get_submodule(name).weight().dequantize()
        assert torch.equal(dequantized, model.get_submodule(name).weight), name


def test_dynamic_quantize_refuses_parametrized(tiny_model_factory):
    model = _load(tiny_model_factory("bert", 2))
    prepare_qat(model)
    with pytest.raises(UserError):
        dynamic_quantize(model)


@pytest.mark.filterwarnings("ignore")
def test_static_onnx_quantization(tiny_model_factory, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from distilprune.quantize import static_quantize_onnx

    path = tiny_model_factory("bert", 2)
    model = _confident(_load(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"]), str(tmp_path / "m.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes=axes, dynamo=False, opset_version=17)
    out = static_quantize_onnx(tmp_path / "m.onnx", tmp_path / "q" / "m.int8.onnx", tokenizer,
                               SAMPLE_TEXTS, batch_size=4)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    feed = {k: enc[k].numpy() for k in ("input_ids", "attention_mask")}
    logits = ort.InferenceSession(str(out)).run(None, feed)[0]
    ref = model(**enc).logits.detach().numpy()
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.75
    assert not np.array_equal(logits, ref)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["m.int8.onnx"]
    with pytest.raises(UserError):
        static_quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", tokenizer, ["a"])


def test_finetune_with_qat_survives_evaluation_and_best_restore(tiny_model_factory, tiny_csv, tmp_path):
    """Evaluations run under inference mode; the QAT observers must still restore cleanly."""
    from distilprune.jobs.common import DataConfig
    from distilprune.jobs.finetune import FinetuneConfig, finetune
    from distilprune.quantize import QATConfig
    from distilprune.train import TrainConfig

    cfg = FinetuneConfig(model=str(tiny_model_factory("bert")), out=str(tmp_path / "qat"),
                         data=DataConfig(train=str(tiny_csv), max_length=32), qat=QATConfig(),
                         train=TrainConfig(max_steps=6, batch_size=8, eval_every=2, patience=None))
    summary = finetune(cfg)
    assert summary["train"]["best"] is not None
    assert (tmp_path / "qat" / "model.safetensors").is_file()
