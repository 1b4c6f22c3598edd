"""Tiny random models of each supported architecture, built in-process (tests, smoke runs)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLNetConfig,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """A small lower-casing word-level tokenizer (BERT-style specials) fit on ``texts``."""
    words = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word, _ in words.most_common(vocab_size - len(SPECIAL_TOKENS)):
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=128,
    )


def tiny_config(arch: str, vocab_size: int, num_layers: int = 4, num_labels: int = 2) -> PretrainedConfig:
    """A random config with hidden size 32 and ``num_layers`` layers for ``arch``."""
    common = {"vocab_size": vocab_size, "pad_token_id": 0, "num_labels": num_labels}
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=130, **common)
    if arch == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=132, bos_token_id=2,
                             eos_token_id=3, **common)
    if arch == "mpnet":
        return MPNetConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=132, bos_token_id=2,
                           eos_token_id=3, **common)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=num_layers, n_heads=2, hidden_dim=64,
                                max_position_embeddings=130, **common)
    if arch == "xlnet":
        return XLNetConfig(d_model=32, n_layer=num_layers, n_head=2, d_inner=64, **common)
    raise ValueError(f"unknown architecture {arch!r}")


def build_tiny_model(
    arch: str,
    out_dir: str | Path,
    texts: Iterable[str],
    num_layers: int = 4,
    seed: int = 0,
) -> Path:
    """Save a tiny random ``arch`` classifier plus a tokenizer fit on ``texts`` to ``out_dir``."""
    tokenizer = build_tokenizer(texts)
    if arch == "xlnet":
        tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), num_layers)
    model = AutoModelForSequenceClassification.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
