"""The sparse int8 engine: kernel = dense integer reference bit for bit; packing; models; CLI."""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import pytest
import torch
from conftest import run_cli

from distilprune.engine import kernels as kernel_module
from distilprune.engine.kernels import kernel_status
from distilprune.engine.packing import pack_int8, pack_linear
from distilprune.engine.sparse import SparseLinear, encoder_linears, load_sparse, sparsify
from distilprune.export.source import load_model_and_tokenizer
from distilprune.formats import is_sparse_dir

ARCHS = ("bert", "roberta", "distilbert", "xlnet", "mpnet")
TEXTS = ["Forest fire near La Ronge Sask. Canada", "I love fruits", "ok",
         "13,000 people receive #wildfires evacuation orders in California"]
STATUS = kernel_status()
needs_kernels = pytest.mark.skipif(not STATUS.available, reason=STATUS.reason)
ISAS = [isa for isa in ("avx512_vnni", "avx2")
        if STATUS.available and (isa == "avx2" or STATUS.isa == "avx512_vnni")]


def unpack_activations(xq: torch.Tensor, tokens: int, features: int) -> torch.Tensor:
    """int8 activations ``[tokens, features]`` back from the kernel's tiled unsigned layout."""
    tiles, blocks, tile = xq.shape
    u = xq.view(torch.uint8).view(tiles, blocks, tile, 4).permute(0, 2, 1, 3).reshape(-1, blocks * 4)
    return u[:tokens, :features].to(torch.int32) - 128


def reference(q_x, x_scale, q_w, w_scale, bias):
    """Dense integer matmul and the same float epilogue, in the same order."""
    acc = q_x.long() @ q_w.long().T
    return acc.float() * x_scale[:, None] * w_scale[None, :] + bias[None, :]


def random_int8(out: int, features: int, sparsity: float, generator) -> torch.Tensor:
    q = torch.randint(-127, 128, (out, features), dtype=torch.int8, generator=generator)
    q[torch.rand(out, features, generator=generator) < sparsity] = 0
    return q


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("tokens", "features", "out", "sparsity"), [
    (1, 4, 1, 0.0), (5, 7, 3, 0.5), (130, 384, 384, 0.9), (64, 1536, 384, 0.99),
    (200, 33, 17, 0.0), (8, 384, 40, 1.0), (1000, 64, 48, 0.8), (17, 130, 19, 0.95)])
def test_kernel_equals_integer_reference(isa, tokens, features, out, sparsity):
    gen = torch.Generator().manual_seed(tokens * 7 + out)
    x = torch.randn(tokens, features, generator=gen) * 3
    q_w = random_int8(out, features, sparsity, gen)
    q_w[0] = 0  # an empty row
    w_scale, bias = torch.rand(out, generator=gen) / 50, torch.randn(out, generator=gen)
    packed = pack_int8(q_w, w_scale)
    ops = kernel_module.kernels()
    xq, xs = ops.quantize_tokens(x)
    y = ops.sparse_matmul(xq, xs, tokens, packed.row_ptr, packed.cols, packed.vals, packed.even,
                          packed.odd, packed.wsum, packed.wscale, bias, isa)
    q_x = unpack_activations(xq, tokens, features)
    assert torch.equal(y, reference(q_x, xs[:tokens], q_w, w_scale, bias))


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
def test_fused_gelu_epilogue_equals_gelu_of_the_output(isa):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(150, 96, generator=gen) * 3
    q_w = random_int8(70, 96, 0.8, gen)
    packed = pack_int8(q_w, torch.rand(70, generator=gen) / 20)
    ops = kernel_module.kernels()
    xq, xs = ops.quantize_tokens(x)
    args = (xq, xs, 150, packed.row_ptr, packed.cols, packed.vals, packed.even, packed.odd,
            packed.wsum, packed.wscale, torch.randn(70, generator=gen), isa)
    plain, fused = ops.sparse_matmul(*args), ops.sparse_matmul(*args, activation="gelu")
    assert plain.abs().max() > 4  # the erf tails are exercised
    assert torch.allclose(fused, torch.nn.functional.gelu(plain), atol=3e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="unknown activation"):
        ops.sparse_matmul(*args, activation="relu")


@needs_kernels
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_fuses_every_feed_forward_gelu(arch, tiny_model_factory):
    from distilprune.engine.sparse import fuse_gelu

    model, _ = load_model_and_tokenizer(tiny_model_factory(arch))
    engine = sparsify(copy.deepcopy(model))
    fused = [m for m in engine.modules() if isinstance(m, SparseLinear) and m.activation == "gelu"]
    assert len(fused) == model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") \
        else len(fused) == model.config.n_layers
    assert fuse_gelu(engine) == 0  # nothing left to fuse


@needs_kernels
def test_activation_quantization_is_per_token_symmetric():
    x = torch.randn(70, 50) * torch.linspace(0.1, 10, 70)[:, None]
    x[3] = 0  # an all-zero token
    xq, xs = kernel_module.kernels().quantize_tokens(x)
    q = unpack_activations(xq, 70, 50)
    assert q.abs().max() <= 127
    expected_scale = x.abs().amax(1) / 127
    expected_scale[3] = 1.0
    assert torch.allclose(xs[:70], expected_scale)
    assert (q.float() - x / xs[:70, None]).abs().max() <= 0.5 + 1e-3
    assert (q[3] == 0).all()


def test_packing_round_trip_and_block_density():
    gen = torch.Generator().manual_seed(0)
    q = random_int8(12, 10, 0.7, gen)
    packed = pack_int8(q, torch.ones(12))
    assert torch.equal(packed.dense_int8(), q)
    blocks = torch.nn.functional.pad(q, (0, 2)).view(12, 3, 4).ne(0).any(-1)
    assert packed.cols.numel() == int(blocks.sum())
    assert packed.block_density == pytest.approx(float(blocks.float().mean()))
    assert torch.equal(packed.wsum, q.int().sum(1))
    pairs = packed.even.view(torch.int16).view(-1, 2)  # (w0, w2) per block, little endian
    assert torch.equal(pairs[:, 0], packed.vals.view(torch.int8).view(-1, 4)[:, 0].to(torch.int16))


def test_pack_linear_is_exact_for_weights_on_the_int8_grid():
    scale = torch.rand(6, 1) / 10 + 0.01
    weight = torch.randint(-127, 128, (6, 16)).float() * scale
    weight[:, 0] = 127 * scale[:, 0]  # amax on the grid
    packed = pack_linear(weight)
    assert torch.equal(packed.dense_int8().float() * packed.wscale[:, None], weight)


def _hidden_and_logits(model, tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    names = [n for n in tokenizer.model_input_names if n in enc]
    with torch.inference_mode():
        out = model(**{n: enc[n] for n in names}, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@needs_kernels
@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_model_matches_fp32_and_reloads_exactly(arch, tiny_model_factory, tmp_path):
    from distilprune.export.sparse import export_sparse

    model_dir = tiny_model_factory(arch)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    names = set(encoder_linears(model))
    engine = sparsify(copy.deepcopy(model))
    swapped = {n for n, m in engine.named_modules() if isinstance(m, SparseLinear)}
    assert swapped == names and names
    hidden, _ = _hidden_and_logits(model, tokenizer)
    sparse_hidden, sparse_logits = _hidden_and_logits(engine, tokenizer)
    assert (sparse_hidden - hidden).norm() / hidden.norm() < 0.05  # int8 error, not garbage

    result = export_sparse(model_dir, tmp_path / "sparse", parity_texts=TEXTS)
    assert is_sparse_dir(tmp_path / "sparse") and result["parity"]["agreement"] == 1.0
    assert json.loads((tmp_path / "sparse" / "parity.json").read_text()) == result["parity"]
    reloaded = _hidden_and_logits(load_sparse(tmp_path / "sparse"), tokenizer)
    assert torch.equal(reloaded[1], _hidden_and_logits(load_sparse(tmp_path / "sparse"), tokenizer)[1])
    assert (reloaded[0] - hidden).norm() / hidden.norm() < 0.05  # + int8 embeddings
    assert (reloaded[1] - sparse_logits).abs().max() <= result["parity"]["max_abs_diff"] * 2 + 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse"]  # nothing left behind


@needs_kernels
def test_pruned_model_packs_only_kept_blocks(tiny_model_factory, tmp_path):
    from distilprune.export.sparse import export_sparse
    from distilprune.prune.masks import block_magnitude_mask

    model, tokenizer = load_model_and_tokenizer(tiny_model_factory("bert"))
    for linear in encoder_linears(model).values():
        linear.weight.data *= block_magnitude_mask(linear.weight.data, 0.9, 4)
    model.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    result = export_sparse(tmp_path / "pruned", tmp_path / "sparse", parity_texts=TEXTS)
    assert result["block_density"] == pytest.approx(0.1, abs=0.02)
    dense = export_sparse(tmp_path / "pruned", tmp_path / "dense", parity_texts=TEXTS)
    assert dense["size_bytes"] == result["size_bytes"]  # same weights, same file


def test_without_kernels_the_engine_warns_and_runs_dense_int8(tiny_model_factory, monkeypatch):
    monkeypatch.setattr("distilprune.engine.sparse.kernel_status",
                        lambda: kernel_module.KernelStatus(False, "none", "no compiler"))
    kernel_module.warn_fallback.cache_clear()
    model, tokenizer = load_model_and_tokenizer(tiny_model_factory("bert"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = sparsify(copy.deepcopy(model))
    assert any("no compiler" in str(w.message) for w in caught)
    assert not any(isinstance(m, SparseLinear) for m in engine.modules())
    hidden, _ = _hidden_and_logits(model, tokenizer)
    assert (_hidden_and_logits(engine, tokenizer)[0] - hidden).norm() / hidden.norm() < 0.05


@needs_kernels
def test_cli_export_predict_evaluate_on_the_sparse_engine(tiny_model_factory, tiny_csv, tmp_path,
                                                          monkeypatch, capfd):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_factory("bert"), model_dir)
    (model_dir / "distilprune.json").write_text(json.dumps({"preprocess": ["lowercase"], "max_length": 32}))
    out = tmp_path / "sparse"
    code, stdout, err = run_cli(monkeypatch, capfd, "export", "--model", model_dir, "--out", out,
                                "--format", "sparse")
    assert code == 0, err
    assert "agreement" in stdout and is_sparse_dir(out)
    for name in ("config.json", "tokenizer.json", "parity.json"):
        assert (out / name).is_file(), name
    # the preprocessing travels with the model
    assert (out / "distilprune.json").read_bytes() == (model_dir / "distilprune.json").read_bytes()
    for model_arg in ([out], [model_dir, "--engine", "sparse"]):
        code, stdout, err = run_cli(monkeypatch, capfd, "predict", "--model", *model_arg, "--text", TEXTS[0])
        assert code == 0, err
        assert "probabilities" in stdout
    code, _, err = run_cli(monkeypatch, capfd, "evaluate", "--model", out, "--data", tiny_csv,
                           "--out", tmp_path / "eval")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capfd, "predict", "--model", out, "--engine", "torch", "--text", "x")
    assert code == 2 and "sparse engine" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capfd, "predict", "--model", model_dir, "--engine", "gpu",
                           "--text", "x")
    assert code == 2 and "unknown engine" in err


@needs_kernels
def test_benchmark_runner_sparse_suffix(tiny_model_factory):
    from distilprune.benchmark.speed import load_runner, measure, measure_dynamic

    runner = load_runner(f"{tiny_model_factory('bert')}@sparse", threads=1, max_length=16)
    assert runner.kind == "sparse"
    result = measure(runner, TEXTS, batch_sizes=(1, 2), seq_len=16, warmup=1, repeats=2, threads=1)
    assert result["latency"]["2"]["p50_ms"] > 0
    dynamic = measure_dynamic(runner, TEXTS, batch_sizes=(1, 3), max_batches=2, warmup=1)
    assert dynamic["1"]["batches"] == 2 and dynamic["3"]["batches"] == 2
    info = runner.info()
    assert info["size_bytes"] > 0 and info["params"] >= info["nonzero_params"] > 0
