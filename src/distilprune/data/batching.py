"""Tokenisation and length-grouped batching (tweets are short: padding to the batch max is cheap)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase


class EncodedDataset(Dataset):
    """Token ids (unpadded) with optional labels: one per item, or one per token (token
    classification, -100 where none), or ``targets`` per item (e.g. QA start/end positions)."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence | None = None,
                 targets: dict[str, list[int]] | None = None):
        self.encodings = encodings
        self.labels = list(labels) if labels is not None else None
        self.targets = targets or {}

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, list[int] | int]:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["index"] = index
        if self.labels is not None:
            item["labels"] = self.labels[index]
        item.update({key: values[index] for key, values in self.targets.items()})
        return item

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.encodings["input_ids"]]


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
           pairs: Sequence[str] | None = None) -> dict[str, list]:
    """Tokenise without padding; keep ids and attention masks (and the token type ids of text
    pairs, when the tokenizer makes them)."""
    if pairs is None:
        out = tokenizer(list(texts), truncation=True, max_length=max_length)
        return {k: out[k] for k in ("input_ids", "attention_mask")}
    out = tokenizer(list(texts), list(pairs), truncation=True, max_length=max_length)
    return {k: out[k] for k in MODEL_INPUTS if k in out}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POSITIONS = ("start_positions", "end_positions")  # QA targets: token indices in the unpadded input
TARGETS = ("labels", "index", *POSITIONS)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar length: megabatches of 50 batches are sorted by length.

    Deterministic for a given ``seed`` and epoch (``set_epoch``). ``indices`` may repeat
    entries (oversampling).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 indices: Sequence[int] | None = None, drop_last: bool = False):
        self.lengths = list(lengths)
        self.indices = list(indices) if indices is not None else list(range(len(self.lengths)))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(self.indices)
        rng = random.Random(self.seed * 1000 + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        mega = self.batch_size * 50
        chunks = [order[i:i + mega] for i in range(0, len(order), mega)]
        batches = []
        for chunk in chunks:
            chunk.sort(key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_collator(tokenizer: PreTrainedTokenizerBase):
    """Pad a list of items to the batch's longest sequence and tensorise labels (per-token labels
    are padded with -100 on the tokenizer's padding side)."""

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        extras = {k: [item.pop(k) for item in items] for k in TARGETS if k in items[0]}
        lengths = [len(item["input_ids"]) for item in items]
        batch = tokenizer.pad([{k: v for k, v in item.items() if k in MODEL_INPUTS} for item in items],
                              return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        width, side = batch["input_ids"].shape[1], tokenizer.padding_side
        for key, values in extras.items():
            if values and isinstance(values[0], list):
                values = [pad_labels(v, width, side) for v in values]
            elif key in POSITIONS and side == "left":  # token positions move with the left padding
                values = [v + width - n for v, n in zip(values, lengths, strict=True)]
            batch[key] = torch.tensor(values, dtype=torch.long)
        return batch

    return collate


def pad_labels(labels: list[int], width: int, side: str = "right") -> list[int]:
    """Per-token labels padded with -100 to ``width`` (left or right, as the input ids)."""
    fill = [-100] * (width - len(labels))
    return fill + labels if side == "left" else labels + fill


def make_loader(dataset: EncodedDataset, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                seed: int = 0, shuffle: bool = True, indices: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader over length-grouped batches (train: shuffled; eval: sorted, ``shuffle=False``)."""
    sampler = LengthGroupedBatchSampler(dataset.lengths(), batch_size, seed, shuffle, indices)
    # An own generator keeps DataLoader start-up from consuming the global RNG (exact resume).
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=make_collator(tokenizer),
                      generator=torch.Generator().manual_seed(seed))


def oversample_indices(labels: Sequence[int], seed: int) -> list[int]:
    """Indices where every minority class is resampled (with replacement) up to the majority count."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    target = max(len(v) for v in by_class.values())
    out: list[int] = []
    for members in by_class.values():
        out += members + [rng.choice(members) for _ in range(target - len(members))]
    return sorted(out)


def class_weights(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * count_c)`` for a weighted cross-entropy."""
    counts = torch.bincount(torch.tensor(list(labels)), minlength=num_labels).float().clamp(min=1)
    return len(labels) / (num_labels * counts)
