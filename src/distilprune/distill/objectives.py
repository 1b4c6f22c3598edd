"""Objectives for the training loop: plain classification, task distillation, MLM distillation,
token classification and extractive QA (each optionally distilled from a teacher of its task)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distilprune.distill.losses import (
    layerwise_cosine_loss,
    layerwise_mse_loss,
    mask_tokens,
    mlm_loss,
    soft_target_kl,
    span_ce,
    span_kl,
    token_ce,
)
from distilprune.models.base import model_inputs

Batch = dict[str, torch.Tensor]
Pairs = Sequence[tuple[int, int]]
LAST: Pairs = ((-1, -1),)  # the last student layer against the last teacher layer


class ClassificationObjective:
    """Cross-entropy on the labels, optionally class-weighted."""

    def __init__(self, class_weights: torch.Tensor | None = None):
        self.class_weights = class_weights

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**model_inputs(model, batch)).logits
        loss = F.cross_entropy(logits, batch["labels"], weight=self.class_weights)
        return loss, {"loss": loss.item()}


class TaskDistillationObjective:
    """``alpha_soft·KL(student‖teacher/T)·T² + alpha_hard·CE(labels)`` with cached teacher logits.

    ``teacher_logits[i]`` are the teacher's logits for dataset item ``i`` (the batch carries the
    item indices), so the teacher runs once, not once per epoch. With ``alpha_cos > 0`` a teacher
    model is run on the fly to add the hidden-state cosine term (hidden sizes must match) over
    the ``hidden_pairs`` of ``hidden_states`` indices (default: the last layers).
    """

    def __init__(self, teacher_logits: torch.Tensor, temperature: float = 2.0,
                 alpha_soft: float = 0.5, alpha_hard: float = 0.5, alpha_cos: float = 0.0,
                 teacher: nn.Module | None = None, class_weights: torch.Tensor | None = None,
                 hidden_pairs: Pairs | None = None):
        self.teacher_logits = teacher_logits
        self.temperature = temperature
        self.alpha_soft, self.alpha_hard, self.alpha_cos = alpha_soft, alpha_hard, alpha_cos
        self.teacher = teacher
        self.hidden_pairs = hidden_pairs or LAST
        self.class_weights = class_weights

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        want_hidden = self.alpha_cos > 0
        out = model(**model_inputs(model, batch), output_hidden_states=want_hidden)
        teacher_logits = self.teacher_logits[batch["index"]]
        soft = soft_target_kl(out.logits, teacher_logits, self.temperature)
        hard = F.cross_entropy(out.logits, batch["labels"], weight=self.class_weights)
        loss = self.alpha_soft * soft + self.alpha_hard * hard
        logs = {"loss": loss.item(), "kd": soft.item(), "ce": hard.item()}
        if want_hidden:
            with torch.no_grad():
                t_out = self.teacher(**model_inputs(self.teacher, batch), output_hidden_states=True)
            cos = layerwise_cosine_loss(out.hidden_states, t_out.hidden_states, self.hidden_pairs,
                                        batch["attention_mask"])
            loss = loss + self.alpha_cos * cos
            logs.update(loss=loss.item(), cos=cos.item())
        return loss, logs


class _HeadObjective:
    """Shared by the token-classification and QA objectives: the hard-label loss alone, or with a
    ``teacher`` of the same task (same tokenizer) ``alpha_soft·KL(teacher‖student at T)·T² +
    alpha_hard·hard`` (the teacher runs on each batch: its outputs have the batch's shape)."""

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 2.0,
                 alpha_soft: float = 0.5, alpha_hard: float = 0.5):
        self.teacher = teacher.eval() if teacher is not None else None
        self.temperature, self.alpha_soft, self.alpha_hard = temperature, alpha_soft, alpha_hard

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(**model_inputs(model, batch))
        hard = self.hard(out, batch)
        if self.teacher is None:
            return hard, {"loss": hard.item()}
        with torch.no_grad():
            teacher = self.teacher(**model_inputs(self.teacher, batch))
        soft = self.soft(out, teacher, batch)
        loss = self.alpha_soft * soft + self.alpha_hard * hard
        return loss, {"loss": loss.item(), "kd": soft.item(), "ce": hard.item()}


class TokenClassificationObjective(_HeadObjective):
    """Per-token cross-entropy on the labelled tokens (each word's first sub-token); with a teacher,
    the per-token soft targets on those same tokens."""

    def hard(self, out, batch: Batch) -> torch.Tensor:
        return token_ce(out.logits, batch["labels"])

    def soft(self, out, teacher, batch: Batch) -> torch.Tensor:
        return soft_target_kl(out.logits, teacher.logits, self.temperature, batch["labels"] != -100)


class QuestionAnsweringObjective(_HeadObjective):
    """Start/end cross-entropy; with a teacher, the soft start and end distributions over the
    sequence positions (padding excluded)."""

    def hard(self, out, batch: Batch) -> torch.Tensor:
        return span_ce(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"])

    def soft(self, out, teacher, batch: Batch) -> torch.Tensor:
        return span_kl((out.start_logits, out.end_logits), (teacher.start_logits, teacher.end_logits),
                       batch["attention_mask"], self.temperature)


class DynamicMasker:
    """BERT dynamic masking (15%, 80/10/10) with its own seeded generator."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0):
        self.special_ids = sorted({*tokenizer.all_special_ids, tokenizer.pad_token_id} - {None})
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        self.mlm_probability = mlm_probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_input_ids, labels)``; labels are -100 where nothing was masked."""
        return mask_tokens(input_ids, self.special_ids, self.mask_id, self.vocab_size,
                           mlm_probability=self.mlm_probability, generator=self.generator)


class MLMDistillationObjective:
    """DistilBERT's triple loss on dynamically masked text (no NSP).

    ``L = alpha_ce·KL(student‖teacher at T)·T² + alpha_mlm·MLM + alpha_cos·(1 − cos(h_s, h_t))
    + alpha_mse·MSE(h_s, h_t)``.
    The soft-target term covers every non-padding token (``restrict_ce_to_mask=False``, as
    DistilBERT's default) or only the masked ones. The hidden-state terms (cosine; TinyBERT's MSE)
    average over the ``hidden_pairs`` of ``hidden_states`` indices (default: the last layers).
    """

    def __init__(self, teacher: nn.Module, masker: DynamicMasker, alpha_ce: float = 5.0,
                 alpha_mlm: float = 2.0, alpha_cos: float = 1.0, temperature: float = 2.0,
                 restrict_ce_to_mask: bool = False, hidden_pairs: Pairs | None = None,
                 alpha_mse: float = 0.0):
        self.hidden_pairs = hidden_pairs or LAST
        self.teacher = teacher.eval()
        self.masker = masker
        self.weights = {"ce": alpha_ce, "mlm": alpha_mlm, "cos": alpha_cos, "mse": alpha_mse}
        self.temperature = temperature
        self.restrict_ce_to_mask = restrict_ce_to_mask

    def generators(self) -> list[torch.Generator]:
        """The masking generator (saved with training checkpoints)."""
        return [self.masker.generator]

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        input_ids, labels = self.masker(batch["input_ids"])
        attention_mask = batch["attention_mask"]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        want_hidden = self.weights["cos"] > 0 or self.weights["mse"] > 0
        # on the hidden-state terms alone, the vocabulary projection (a third of the work) is skipped
        want_logits = self.weights["ce"] > 0 or self.weights["mlm"] > 0
        student = _body(model, want_logits)(**inputs, output_hidden_states=want_hidden)
        with torch.no_grad():
            teacher = _body(self.teacher, want_logits)(**inputs, output_hidden_states=want_hidden)
        terms = {}
        if want_logits:
            positions = labels != -100 if self.restrict_ce_to_mask else attention_mask.bool()
            terms["ce"] = soft_target_kl(student.logits, teacher.logits, self.temperature, positions)
            terms["mlm"] = mlm_loss(student.logits, labels)
        for name, layerwise in (("cos", layerwise_cosine_loss), ("mse", layerwise_mse_loss)):
            if self.weights[name] > 0:
                terms[name] = layerwise(student.hidden_states, teacher.hidden_states, self.hidden_pairs,
                                        attention_mask)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}


def _body(model: nn.Module, with_head: bool) -> nn.Module:
    """The model itself, or its encoder without the masked-LM head."""
    return model if with_head else model.base_model


class MLMObjective:
    """Plain masked-LM loss (fitting an MLM head, continued pre-training)."""

    def __init__(self, masker: DynamicMasker):
        self.masker = masker

    def generators(self) -> list[torch.Generator]:
        """The masking generator (saved with training checkpoints)."""
        return [self.masker.generator]

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        input_ids, labels = self.masker(batch["input_ids"])
        out = model(input_ids=input_ids, attention_mask=batch["attention_mask"])
        loss = mlm_loss(out.logits, labels)
        return loss, {"loss": loss.item()}
