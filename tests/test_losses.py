"""Distillation losses and dynamic masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distilprune.distill import (
    hidden_cosine_loss,
    hidden_layer_pairs,
    hidden_mse_loss,
    layerwise_cosine_loss,
    layerwise_mse_loss,
    mask_tokens,
    mlm_loss,
    soft_target_ce,
    soft_target_kl,
)
from distilprune.errors import UserError
from distilprune.models.tiny import build_tokenizer


def logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_kl_zero_for_identical_and_positive_otherwise():
    t = logits(8, 3)
    assert soft_target_kl(t.clone(), t, 2.0).abs() < 1e-6
    assert soft_target_kl(logits(8, 3, seed=1), t, 2.0) > 0


def test_kl_matches_definition_and_t_squared_scaling():
    s, t = logits(4, 5), logits(4, 5, seed=1)
    for temperature in (1.0, 2.0, 4.0):
        p_t = F.softmax(t / temperature, -1)
        log_p_s = F.log_softmax(s / temperature, -1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
        assert torch.allclose(soft_target_kl(s, t, temperature), kl * temperature**2, atol=1e-6)
    with pytest.raises(ValueError):
        soft_target_kl(s, t, 0.0)


def test_kl_masked_positions_batchmean():
    s, t = logits(2, 6, 11), logits(2, 6, 11, seed=1)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 4] = True
    expected = soft_target_kl(s[mask], t[mask], 2.0)
    assert torch.allclose(soft_target_kl(s, t, 2.0, mask), expected)
    # changing unselected positions changes nothing
    s2 = s.clone()
    s2[~mask] += 5.0
    assert torch.allclose(soft_target_kl(s2, t, 2.0, mask), expected)
    empty = soft_target_kl(s, t, 2.0, torch.zeros(2, 6, dtype=torch.bool))
    assert empty == 0 and not math.isnan(empty.item())


def test_soft_target_ce_differs_from_kl_by_teacher_entropy():
    s, t = logits(6, 4), logits(6, 4, seed=1)
    temperature = 3.0
    p_t = F.softmax(t / temperature, -1)
    entropy = -(p_t * p_t.log()).sum(-1).mean() * temperature**2
    ce = soft_target_ce(s, t, temperature)
    assert torch.allclose(ce, soft_target_kl(s, t, temperature) + entropy, atol=1e-5)
    s_kl, s_ce = s.clone().requires_grad_(), s.clone().requires_grad_()
    soft_target_kl(s_kl, t, temperature).backward()
    soft_target_ce(s_ce, t, temperature).backward()
    assert torch.allclose(s_kl.grad, s_ce.grad, atol=1e-6)


def test_gradients_reach_student_not_teacher():
    s = logits(4, 7, 16).requires_grad_()
    t = logits(4, 7, 16, seed=1).requires_grad_()
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[:, -2:] = 0
    labels = torch.full((4, 7), -100)
    labels[:, 1] = 3
    loss = soft_target_kl(s, t, 2.0, mask.bool()) + hidden_cosine_loss(s, t, mask)
    loss = loss + mlm_loss(s, labels)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert s.grad[:, -2:].abs().sum() == 0  # padding positions get nothing (labels skip them)
    assert t.grad is None


def test_hidden_cosine_loss():
    h = logits(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hidden_cosine_loss(h.clone(), h, mask).abs() < 1e-6
    assert hidden_cosine_loss(2.0 * h, h, mask).abs() < 1e-6  # scale-invariant
    assert torch.allclose(hidden_cosine_loss(-h, h, mask), torch.tensor(2.0))
    other = logits(2, 5, 8, seed=1)
    expected = F.cosine_embedding_loss(other[mask.bool()], h[mask.bool()], torch.ones(8))
    assert torch.allclose(hidden_cosine_loss(other, h, mask), expected)
    noisy = h.clone()
    noisy[0, 3:] = other[0, 3:]  # padded positions are ignored
    assert hidden_cosine_loss(noisy, h, mask).abs() < 1e-6
    with pytest.raises(UserError, match="hidden sizes"):
        hidden_cosine_loss(logits(2, 5, 4), h, mask)


def test_hidden_mse_loss_sees_scale_and_skips_padding():
    h = logits(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hidden_mse_loss(h.clone(), h, mask).abs() < 1e-6
    rows = h[mask.bool()]
    assert torch.allclose(hidden_mse_loss(2.0 * h, h, mask), (rows**2).mean())  # unlike the cosine
    noisy = h.clone()
    noisy[0, 3:] = 100.0  # padded positions are ignored
    assert hidden_mse_loss(noisy, h, mask).abs() < 1e-6
    student = h.clone().requires_grad_()
    hidden_mse_loss(student + 1.0, h, mask).backward()
    assert student.grad[0, 3:].abs().sum() == 0 and student.grad[mask.bool()].abs().sum() > 0
    with pytest.raises(UserError, match="MSE loss needs equal hidden sizes"):
        hidden_mse_loss(logits(2, 5, 4), h, mask)


def test_hidden_layer_pairs():
    assert hidden_layer_pairs(6, 12) == [(6, 12)]
    assert hidden_layer_pairs(6, 12, "all") == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]
    assert hidden_layer_pairs(4, 4, "all") == [(1, 1), (2, 2), (3, 3), (4, 4)]
    with pytest.raises(UserError, match="cos_layers"):
        hidden_layer_pairs(6, 12, "every")


def test_layerwise_cosine_loss_averages_the_pairs():
    states = [logits(2, 5, 8, seed=k) for k in range(4)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student = [s.clone() for s in states]
    student[1] = -states[1]  # layer 1 is the opposite of its teacher: cosine loss 2
    assert layerwise_cosine_loss(student, states, [(3, 3)], mask).abs() < 1e-6
    assert torch.allclose(layerwise_cosine_loss(student, states, [(1, 1), (3, 3)], mask), torch.tensor(1.0))
    expected = (hidden_cosine_loss(states[2], states[3], mask) + 2.0) / 2
    assert torch.allclose(layerwise_cosine_loss(student, states, [(2, 3), (1, 1)], mask), expected)


def test_layerwise_mse_loss_averages_the_pairs():
    states = [logits(2, 5, 8, seed=k) for k in range(3)]
    student = [s.clone() for s in states]
    student[2] = states[2] + 3.0  # every coordinate off by 3: squared error 9
    assert layerwise_mse_loss(student, states, [(1, 1)]).abs() < 1e-6
    assert torch.allclose(layerwise_mse_loss(student, states, [(1, 1), (2, 2)]), torch.tensor(4.5))


def test_mlm_loss_ignores_unlabelled_positions():
    s = logits(2, 3, 10)
    labels = torch.tensor([[-100, 4, -100], [7, -100, -100]])
    expected = F.cross_entropy(torch.stack([s[0, 1], s[1, 0]]), torch.tensor([4, 7]))
    assert torch.allclose(mlm_loss(s, labels), expected)
    assert mlm_loss(s, torch.full((2, 3), -100)) == 0


SPECIALS = [0, 1, 2, 3]  # pad, cls, sep, unk
MASK_ID, VOCAB = 4, 100


def batch(rows: int = 400, length: int = 64) -> torch.Tensor:
    """Random ids with CLS/SEP at the ends and padding tails."""
    ids = torch.randint(5, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 1
    lengths = torch.randint(8, length, (rows,), generator=torch.Generator().manual_seed(2))
    for i, n in enumerate(lengths.tolist()):
        ids[i, n] = 2
        ids[i, n + 1:] = 0
    return ids


def test_mask_tokens_rates_and_specials():
    ids = batch()
    masked, labels = mask_tokens(ids, SPECIALS, MASK_ID, VOCAB,
                                 generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != -100
    assert not (chosen & special).any()
    assert torch.equal(masked[special], ids[special])  # specials and padding untouched
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    rate = chosen.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (masked[chosen] == MASK_ID).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.02
    randoms = masked[chosen & (masked != MASK_ID) & (masked != ids)]
    assert abs(len(randoms) / n - 0.1) < 0.02  # ~0.1, minus rare same-token draws
    assert not torch.isin(randoms, torch.tensor([*SPECIALS, MASK_ID])).any()


def test_mask_tokens_deterministic_and_input_untouched():
    ids = batch(20)
    before = ids.clone()
    a = mask_tokens(ids, SPECIALS, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, SPECIALS, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ids, before)


def test_mask_tokens_from_tokenizer():
    tokenizer = build_tokenizer(["forest fire near la ronge", "the bomb was fun"])
    enc = tokenizer(["forest fire near la ronge"] * 200 + ["fun"] * 200, padding=True,
                    return_tensors="pt")
    ids = enc["input_ids"]
    masked, labels = mask_tokens(ids, tokenizer, mlm_probability=0.5,
                                 generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert not (labels[special] != -100).any()
    assert (masked == tokenizer.mask_token_id).any()
    assert torch.equal(masked[enc["attention_mask"] == 0], ids[enc["attention_mask"] == 0])
    with pytest.raises(ValueError):
        mask_tokens(ids, tokenizer, mlm_probability=1.5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "xlnet", "mpnet"])
def test_mlm_distillation_on_the_hidden_terms_alone_skips_the_head_not_the_loss(arch):
    """With α_ce = α_mlm = 0 the encoders run without their vocabulary projection; the cosine
    term (and so the loss and its gradient) is the one the full objective computes; the
    hidden-state MSE runs alone or beside it."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from distilprune.distill.objectives import DynamicMasker, MLMDistillationObjective
    from distilprune.models.tiny import tiny_config

    tokenizer = build_tokenizer(["forest fire near la ronge", "the bomb was fun", "a lovely day"])
    torch.manual_seed(0)
    config = tiny_config(arch, len(tokenizer), num_layers=2)
    auto = AutoModelForCausalLM if arch == "xlnet" else AutoModelForMaskedLM  # as load_masked_lm
    teacher = auto.from_config(config)
    student = auto.from_config(config).eval()  # no dropout: runs comparable
    batch = dict(tokenizer(["forest fire near la ronge", "a lovely day"], padding=True,
                           return_tensors="pt"))
    pairs = [(1, 1), (2, 2)]

    def run(**alphas):
        student.zero_grad()
        objective = MLMDistillationObjective(teacher, DynamicMasker(tokenizer, 0.5, seed=3),
                                             hidden_pairs=pairs, **alphas)
        loss, logged = objective(student, batch)
        loss.backward()
        return loss, logged, [p.grad.clone() for p in student.base_model.parameters() if p.grad is not None]

    full_loss, full_logged, _ = run(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
    cos_loss, cos_logged, cos_grads = run(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=1.0)
    assert set(full_logged) == {"loss", "ce", "mlm", "cos"} and set(cos_logged) == {"loss", "cos"}
    assert full_logged["ce"] > 0 and full_logged["mlm"] > 0
    assert cos_loss.item() == pytest.approx(full_logged["cos"], rel=1e-5) and cos_loss.item() > 0
    _, _, reference = run(alpha_ce=1e-12, alpha_mlm=0.0, alpha_cos=1.0)  # through the head
    assert len(cos_grads) == len(reference)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cos_grads, reference, strict=True))
    # TinyBERT's hidden-state MSE on the same layers: alone, and added to the cosine
    mse_loss, mse_logged, mse_grads = run(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0, alpha_mse=1.0)
    assert set(mse_logged) == {"loss", "mse"} and mse_loss.item() > 0 and mse_grads
    both, both_logged, _ = run(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=1.0, alpha_mse=0.5)
    assert both.item() == pytest.approx(cos_loss.item() + 0.5 * mse_loss.item(), rel=1e-5)
    assert set(both_logged) == {"loss", "cos", "mse"}
