"""Compact sparse / int8 storage: exact round trips, sizes, atomic safetensors-only output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distilprune.errors import UserError
from distilprune.export.storage import (
    WEIGHTS_NAME,
    int8_keys,
    load_compact,
    quantize_rows,
    read_compact_state,
    save_compact,
)
from distilprune.quantize import finalize_qat, prepare_qat


def _load(path) -> nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(path).float().eval()


def _sparsify(model: nn.Module, sparsity: float = 0.9, seed: int = 0) -> None:
    """Zero ``sparsity`` of every matrix (embeddings included) with +0.0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                drop = torch.rand(param.shape, generator=generator) < sparsity
                param.masked_fill_(drop, 0.0)


def _manifest(path) -> dict:
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as handle:
        return json.loads(handle.metadata()["manifest"])


def _ids() -> torch.Tensor:
    return torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["bert", "xlnet", "mpnet"])
def test_fp32_round_trip_is_bit_identical_and_small(arch, tiny_model_factory, tmp_path):
    path = tiny_model_factory(arch, 2)
    model = _load(path)
    _sparsify(model)
    model.save_pretrained(tmp_path / "dense")
    tokenizer = AutoTokenizer.from_pretrained(path)
    report = save_compact(model, tmp_path / "compact", tokenizer=tokenizer)
    loaded = load_compact(tmp_path / "compact")
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype, key
        assert torch.equal(restored[key].view(torch.uint8), tensor.view(torch.uint8)), key
    assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    compact_size = (tmp_path / "compact" / WEIGHTS_NAME).stat().st_size
    assert compact_size == report["compact_bytes"]
    assert compact_size < 0.3 * dense_size, (compact_size, dense_size)
    assert report["sparsity"] > 0.8 and report["layouts"]["bitmask"] > 0


def test_int8_round_trip_within_quant_step(tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory("bert", 2))
    _sparsify(model)
    fp32 = save_compact(model, tmp_path / "fp32")
    report = save_compact(model, tmp_path / "int8", int8=True)
    state = read_compact_state(tmp_path / "int8")
    quantized = int8_keys(model)
    assert "bert.embeddings.word_embeddings.weight" in quantized
    assert "bert.encoder.layer.0.attention.self.query.weight" in quantized
    assert "classifier.weight" not in quantized
    for key, tensor in model.state_dict().items():
        if key in quantized:
            step = tensor.abs().amax(1, keepdim=True) / 127
            assert ((state[key] - tensor).abs() <= step / 2 + 1e-7).all(), key
            assert (state[key][tensor == 0] == 0).all(), key
        else:
            assert torch.equal(state[key], tensor), key
    layouts = {info["layout"] for info in _manifest(tmp_path / "int8").values()}
    assert "bitmask_int8" in layouts
    assert report["payload_bytes"] < 0.8 * fp32["payload_bytes"]
    assert report["compact_bytes"] < fp32["compact_bytes"]
    with torch.no_grad():
        ref = model(input_ids=_ids()).logits
        out = load_compact(tmp_path / "int8")(input_ids=_ids()).logits
    assert torch.allclose(ref, out, atol=1e-2)


def test_qat_weights_round_trip_exactly_in_int8(tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory("distilbert", 2))
    _sparsify(model, 0.5)
    prepare_qat(model)
    model.train()(input_ids=_ids())
    scales = finalize_qat(model)
    save_compact(model.eval(), tmp_path / "c", int8=True)
    state = read_compact_state(tmp_path / "c")
    for name in scales:
        weight = model.get_submodule(name).weight
        assert torch.equal(state[f"{name}.weight"], weight), name


def test_quantize_rows_snaps_to_existing_grid():
    torch.manual_seed(0)
    scale = torch.rand(64) * 0.01 + 1e-4
    q = torch.randint(-127, 128, (64, 48)).float()
    q[:, 0] = 127
    grid = q * scale[:, None]
    q8, found = quantize_rows(grid)
    assert torch.equal(q8.float() * found[:, None], grid)
    noisy = grid + torch.randn_like(grid) * 1e-3
    q8, found = quantize_rows(noisy)
    assert ((q8.float() * found[:, None] - noisy).abs() <= found[:, None] / 2 + 1e-7).all()


def test_save_from_directory_is_safetensors_only_and_atomic(tiny_model_factory, tmp_path):
    source = tiny_model_factory("roberta", 2)
    out = tmp_path / "out"
    report = save_compact(source, out, int8=True)
    files = {p.name for p in out.iterdir()}
    assert WEIGHTS_NAME in files and "config.json" in files
    assert any(name.startswith("tokenizer") for name in files)
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert "model.safetensors" not in files
    assert report["int8"] is True
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = load_compact(out)
    logits = model(**tokenizer(["forest fire near la ronge"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    with pytest.raises(UserError):
        save_compact(source, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    save_compact(source, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_parametrized_model_and_bad_dirs(tiny_model_factory, tmp_path):
    model = _load(tiny_model_factory("bert", 2))
    prepare_qat(model)
    with pytest.raises(UserError):
        save_compact(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserError):
        load_compact(tmp_path)


def test_shrunk_model_round_trips(tiny_model_factory, tmp_path):
    from distilprune.shrink import prune_heads_and_neurons

    model = _load(tiny_model_factory("bert", 2))
    prune_heads_and_neurons(model, head_fraction=0.25, neuron_fraction=0.25)
    save_compact(model, tmp_path / "c")
    loaded = load_compact(tmp_path / "c")
    assert torch.equal(loaded(input_ids=_ids()).logits, model(input_ids=_ids()).logits)
