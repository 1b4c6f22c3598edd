"""The sparse engine's int8 attention: kernel = PyTorch oracle, close to fp32, dispatch and fallbacks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distilprune.engine import attention
from distilprune.engine.kernels import kernel_status
from distilprune.engine.sparse import retain_freed_memory, sparsify
from distilprune.export.source import load_model_and_tokenizer

STATUS = kernel_status()
needs_vnni = pytest.mark.skipif(not attention.attention_available(),
                                reason=f"int8 attention needs AVX-512 VNNI ({STATUS.isa})")
TEXTS = ["Forest fire near La Ronge Sask. Canada", "ok",
         "13,000 people receive #wildfires evacuation orders in California"]


def hf_layout(batch: int, heads: int, tokens: int, dim: int, gen: torch.Generator) -> list[torch.Tensor]:
    """q, k, v as transformers hands them over: (B, H, S, D) views of (B, S, H, D) projections."""
    return [(torch.randn(batch, tokens, heads, dim, generator=gen) * 2).transpose(1, 2)
            for _ in range(3)]


def padding_bias(batch: int, tokens: int, lengths: list[int]) -> torch.Tensor:
    bias = torch.zeros(batch, tokens)
    for b, n in enumerate(lengths):
        bias[b, n:] = -math.inf
    return bias


@needs_vnni
@pytest.mark.parametrize(("batch", "heads", "tokens", "dim"),
                         [(1, 1, 1, 16), (2, 3, 37, 32), (3, 2, 128, 64), (1, 4, 130, 48), (2, 1, 17, 128)])
def test_kernel_equals_the_pytorch_oracle(batch, heads, tokens, dim):
    gen = torch.Generator().manual_seed(tokens + dim)
    q, k, v = hf_layout(batch, heads, tokens, dim, gen)
    bias = padding_bias(batch, tokens, [max(1, tokens - 5 * b) for b in range(batch)])
    out = attention._ops().int8_attention(q, k, v, bias, dim ** -0.5)
    expected = attention.reference_attention(q, k, v, bias, dim ** -0.5)
    assert out.shape == (batch, tokens, heads, dim)
    # Same integers; float32 exp and sums differ from PyTorch's by an ulp, which can move a
    # probability byte by one step (1/255 of one value).
    assert (out - expected).abs().max() <= 2.5 * v.abs().max() / 255
    assert (out - expected).abs().mean() < 1e-5
    # Contiguous (B, H, S, D) inputs give the same result as the strided views.
    same = attention._ops().int8_attention(*(t.contiguous() for t in (q, k, v)), bias, dim ** -0.5)
    assert torch.equal(same, out)


@needs_vnni
def test_int8_attention_is_close_to_fp32_and_ignores_masked_keys():
    gen = torch.Generator().manual_seed(0)
    q, k, v = hf_layout(2, 4, 64, 32, gen)
    bias = padding_bias(2, 64, [64, 20])
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :]).transpose(1, 2)
    out = attention._ops().int8_attention(q, k, v, bias, 32 ** -0.5)
    assert (out - exact).norm() / exact.norm() < 0.03
    v2 = v.clone()
    v2[1, :, 20:] = 1e6  # masked keys' values change neither the output nor its value scales
    assert torch.equal(attention._ops().int8_attention(q, k, v2, bias, 32 ** -0.5), out)


def test_padding_masks_become_one_bias_per_key_and_other_masks_do_not():
    keep = torch.tensor([[True, True, False], [True, True, True]])
    square = keep[:, None, None, :].expand(2, 1, 3, 3)
    bias = attention.key_bias_from_mask(square, 2, 3)
    assert torch.equal(torch.isinf(bias), ~keep) and bias[keep].eq(0).all()
    additive = torch.zeros(2, 1, 1, 3).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    assert torch.equal(attention.key_bias_from_mask(additive, 2, 3), bias)
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool)).expand(2, 1, 3, 3)
    assert attention.key_bias_from_mask(causal, 2, 3) is None
    assert torch.equal(attention.key_bias_from_mask(None, 2, 3), torch.zeros(2, 3))


def _logits(model, tokenizer):
    enc = tokenizer(TEXTS, padding="max_length", max_length=24, return_tensors="pt")
    with torch.inference_mode():
        return model(**{n: enc[n] for n in tokenizer.model_input_names if n in enc}).logits


@needs_vnni
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "xlnet", "mpnet"])
def test_sparse_engine_uses_int8_attention_where_the_model_allows(arch, tiny_model_factory):
    model, tokenizer = load_model_and_tokenizer(tiny_model_factory(arch))
    engine = sparsify(copy.deepcopy(model))
    expected = arch in {"bert", "roberta", "distilbert"}  # xlnet/mpnet: own attention code
    assert (engine.config._attn_implementation == attention.NAME) is expected
    calls = []
    original = attention._ops().int8_attention

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    ops = attention._ops()
    try:
        ops.int8_attention = counting
        logits = _logits(engine, tokenizer)
    finally:
        ops.int8_attention = original
    assert bool(calls) is expected
    reference = _logits(model, tokenizer)
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3


@needs_vnni
def test_head_dims_the_kernel_cannot_take_fall_back_to_sdpa(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    q, k, v = hf_layout(1, 2, 8, 12, gen)  # head dim 12: not a multiple of 16
    module = torch.nn.Module().eval()
    called = []
    monkeypatch.setattr(attention, "_ops", lambda: called.append(1))
    with torch.inference_mode():
        out, _ = attention.int8_attention_forward(module, q, k, v, None, scaling=12 ** -0.5)
    exact = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert not called and torch.allclose(out, exact, atol=1e-6)


def test_freed_memory_stays_in_the_heap_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert retain_freed_memory() is True
