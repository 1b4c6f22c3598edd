"""Pure distillation losses (after HF ``examples/research_projects/distillation/distiller.py``).

Logits are ``(..., C)``; an optional boolean ``mask`` of the leading shape selects the
positions that count (e.g. non-padding or masked tokens). Teacher tensors are detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from distilprune.errors import UserError

IGNORE_INDEX = -100


def _select(tensor: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``tensor`` (flattened to 2-D) at the ``mask`` positions (all when None)."""
    if mask is None:
        return tensor.reshape(-1, tensor.shape[-1])
    if mask.shape != tensor.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(tensor.shape)}")
    return tensor[mask.bool()]


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (no NaN when nothing is selected)."""
    return like.sum() * 0.0


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(teacher_T ‖ student_T)·T²``, averaged over the selected positions ("batchmean").

    This is DistilBERT's soft-target loss: ``KLDivLoss(log_softmax(s/T), softmax(t/T))``. The
    ``T²`` keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = _select(student_logits, mask)
    t = _select(teacher_logits.detach(), mask).to(s.dtype)
    if s.shape[0] == 0:
        return _zero(student_logits)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                  reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_target_ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy with the teacher's soft targets, ``−Σ p_t log p_s · T²`` (mean over rows).

    Equals :func:`soft_target_kl` plus the teacher's entropy, a constant for the student: same
    gradients, but never zero (useful when reporting a CE-style number for task distillation).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = _select(student_logits, mask)
    t = _select(teacher_logits.detach(), mask).to(s.dtype)
    if s.shape[0] == 0:
        return _zero(student_logits)
    targets = F.softmax(t / temperature, dim=-1)
    ce = -(targets * F.log_softmax(s / temperature, dim=-1)).sum(-1).mean()
    return ce * temperature**2


def _hidden_rows(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                 attention_mask: torch.Tensor | None, term: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-padding token rows of student and (detached) teacher hidden states, whose sizes
    must match for the hidden-state ``term``."""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise UserError(
            f"the hidden-state {term} loss needs equal hidden sizes, but the student has "
            f"{student_hidden.shape[-1]} and the teacher {teacher_hidden.shape[-1]}")
    s = _select(student_hidden, attention_mask)
    return s, _select(teacher_hidden.detach(), attention_mask).to(s.dtype)


def hidden_cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(1 − cos(h_s, h_t))`` over non-padding tokens (``CosineEmbeddingLoss``, target 1)."""
    s, t = _hidden_rows(student_hidden, teacher_hidden, attention_mask, "cosine")
    if s.shape[0] == 0:
        return _zero(student_hidden)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def hidden_mse_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error of the hidden states over non-padding tokens (TinyBERT's hidden-state
    loss): unlike the cosine it also sees the direction and size of every coordinate, not only
    the angle, which a few large-valued coordinates dominate."""
    s, t = _hidden_rows(student_hidden, teacher_hidden, attention_mask, "MSE")
    if s.shape[0] == 0:
        return _zero(student_hidden)
    return F.mse_loss(s, t)


COS_LAYERS = ("last", "all")


def check_cos_layers(which: str) -> str:
    """``which`` if it names a cosine layer choice (``last`` or ``all``), else a :class:`UserError`."""
    if which not in COS_LAYERS:
        raise UserError(f"cos_layers must be one of {', '.join(COS_LAYERS)}, got {which!r}")
    return which


def hidden_layer_pairs(student_layers: int, teacher_layers: int,
                       which: str = "last") -> list[tuple[int, int]]:
    """``(student, teacher)`` indices into ``hidden_states`` for the cosine term.

    ``last``: the final layers (DistilBERT). ``all``: every student layer ``m`` against teacher
    layer ``m·T/S`` (TinyBERT's uniform map; the identity for a pruned copy of the teacher), so
    each layer, not only the last, is pulled towards its dense counterpart.
    """
    if check_cos_layers(which) == "last":
        return [(student_layers, teacher_layers)]
    return [(m, m * teacher_layers // student_layers) for m in range(1, student_layers + 1)]


def layerwise_loss(
    hidden_loss: Callable[..., torch.Tensor],
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``hidden_loss`` (:func:`hidden_cosine_loss`, :func:`hidden_mse_loss`) over the
    ``pairs`` of ``(student, teacher)`` hidden-state indices."""
    losses = [hidden_loss(student_states[s], teacher_states[t], attention_mask) for s, t in pairs]
    return torch.stack(losses).mean()


layerwise_cosine_loss = partial(layerwise_loss, hidden_cosine_loss)
layerwise_mse_loss = partial(layerwise_loss, hidden_mse_loss)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM cross-entropy over positions whose label is not ``-100`` (0 if there are none)."""
    if not (labels != IGNORE_INDEX).any():
        return _zero(logits)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-token logits ``(B, L, C)`` over the labelled tokens (label -100 elsewhere:
    later sub-tokens, special tokens, padding); 0 when none is labelled."""
    return mlm_loss(logits, labels)


def span_ce(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
            end_positions: torch.Tensor) -> torch.Tensor:
    """Extractive QA loss: the mean of the start- and end-position cross-entropies (as BERT's)."""
    return (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2


def span_kl(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention_mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """``KL·T²`` between the teacher's and the student's start (and end) distributions over the
    sequence positions, padding excluded; the mean over the distributions given."""
    closed = ~attention_mask.bool()
    terms = [soft_target_kl(s.masked_fill(closed, -1e4), t.masked_fill(closed, -1e4), temperature)
             for s, t in zip(student, teacher, strict=True)]
    return sum(terms) / len(terms)


def _masking_ids(
    special: PreTrainedTokenizerBase | Sequence[int],
    mask_id: int | None,
    vocab_size: int | None,
) -> tuple[list[int], int, int]:
    if isinstance(special, PreTrainedTokenizerBase):
        special_ids = list(special.all_special_ids)
        if special.pad_token_id is not None:
            special_ids.append(special.pad_token_id)
        mask_id = special.mask_token_id if mask_id is None else mask_id
        vocab_size = len(special) if vocab_size is None else vocab_size
    else:
        special_ids = [int(i) for i in special]
    if mask_id is None:
        raise UserError("masked-LM needs a tokenizer with a mask token")
    if vocab_size is None:
        raise ValueError("vocab_size is required when special token ids are given")
    return special_ids, int(mask_id), int(vocab_size)


def mask_tokens(
    input_ids: torch.Tensor,
    special: PreTrainedTokenizerBase | Sequence[int],
    mask_id: int | None = None,
    vocab_size: int | None = None,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT dynamic masking: ``(masked_input_ids, labels)``, labels ``-100`` where not chosen.

    Each non-special token is chosen with ``mlm_probability``; a chosen token becomes
    ``mask_id`` (80%), a random non-special token (10%) or stays (10%). ``special`` is a
    tokenizer (ids, mask token and vocabulary size are read from it) or the special/pad ids,
    which are never chosen. ``input_ids`` is not modified.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    special_ids, mask_id, vocab_size = _masking_ids(special, mask_id, vocab_size)
    device = input_ids.device
    specials = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=device)
    maskable = ~torch.isin(input_ids, specials)

    def draw(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device) < p

    chosen = draw(mlm_probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = chosen & draw(0.8)
    to_random = chosen & ~to_mask & draw(0.5)

    vocab = torch.arange(vocab_size, dtype=input_ids.dtype, device=device)
    allowed = vocab[~torch.isin(vocab, specials)]
    picks = torch.randint(len(allowed), input_ids.shape, generator=generator, device=device)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = allowed[picks][to_random]
    return masked, labels
