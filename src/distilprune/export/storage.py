"""Compact on-disk storage for sparse (and optionally int8) models of every task.

Layout of a compact directory: ``config.json``, the tokenizer files and one
``model.compact.safetensors`` (safetensors only, never pickle). Its ``__metadata__`` holds
``format = "distilprune-compact/1"`` and ``manifest``, a JSON object mapping every state-dict
key to ``{"layout", "shape", "dtype"}``. Layouts and the tensors stored for a key ``k``:

* ``dense``         — ``k``: the tensor as is.
* ``bitmask``       — ``k.bitmask``: uint8, ``np.packbits`` (big bit order) of ``k != 0`` in
  row-major order; ``k.values``: 1-D non-zero values in that order, original dtype.
* ``int8``          — ``k.qweight``: int8 tensor of the shape; ``k.scale``: float32 per row.
* ``bitmask_int8``  — ``k.bitmask`` as above over ``q != 0``; ``k.values``: int8 non-zeros;
  ``k.scale``: float32 per row.

The bitmask layout is used whenever it is smaller than the dense one. With ``int8=True`` the
weights of the transformer-block Linear layers and of every embedding table are quantized per
row (output channel / token), symmetric, ``q ∈ [-127, 127]``, ``scale = amax / 127``
(``w ≈ q · scale``); if a row already lies on such a grid (QAT-finalized weights) the scale is
snapped so that the round trip is bit-exact. Everything else (biases, LayerNorm, classifier
head) keeps its dtype. Zeros are stored as +0.0 (the sign of a negative zero is not kept).

Why not ``compressed-tensors``: version 0.20 no longer ships the sparse-bitmask compressor
(only its legacy config class remains) and its int-quantized compressor only casts dense
per-module weights for its own vLLM-oriented loading path; neither stores a sparse tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedTokenizerBase

from distilprune.errors import UserError, require
from distilprune.formats import COMPACT_WEIGHTS as WEIGHTS_NAME
from distilprune.io import atomic_dir
from distilprune.models.base import auto_class_of, load_config, load_tokenizer

FORMAT = "distilprune-compact/1"
QMAX = 127


def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy()))


def _unpack_mask(bits: torch.Tensor, shape: list[int]) -> torch.Tensor:
    count = int(np.prod(shape))
    flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
    return torch.from_numpy(flat).reshape(shape)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 ``(q, scale)``; rows already on an int8 grid round-trip exactly."""
    from distilprune.quantize.qat import int8_row_qparams

    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale, _ = int8_row_qparams(rows)
    q = torch.clamp(torch.round(rows / scale[:, None]), -QMAX, QMAX)
    return q.to(torch.int8).reshape(weight.shape), _snap_scale(rows, q, scale)


def _snap_scale(rows: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, ulps: int = 4
                ) -> torch.Tensor:
    """Nudge each row's scale by a few ulps when that makes ``q * scale`` equal ``rows`` exactly."""
    exact = (q * scale[:, None] == rows).all(1)
    best = scale.clone()
    for target in (float("inf"), float("-inf")):
        candidate = scale
        for _ in range(ulps):
            candidate = torch.nextafter(candidate, torch.full_like(candidate, target))
            fits = (q * candidate[:, None] == rows).all(1) & ~exact
            best, exact = torch.where(fits, candidate, best), exact | fits
    return best


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` per row, in ``dtype``."""
    rows = q.reshape(q.shape[0], -1).float() * scale[:, None]
    return rows.reshape(q.shape).to(dtype)


def int8_keys(model: nn.Module) -> set[str]:
    """State-dict keys quantized by ``int8=True``: block Linear weights and embedding tables."""
    from distilprune.quantize.qat import quantizable_linears

    keys = {f"{name}.weight" for name in quantizable_linears(model)}
    keys |= {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return keys


def _encode(key: str, tensor: torch.Tensor, int8: bool) -> tuple[dict[str, torch.Tensor], str]:
    tensor = tensor.detach().cpu().contiguous()
    if int8:
        q, scale = quantize_rows(tensor)
        payload, nonzero = {f"{key}.scale": scale}, q != 0
        dense_bytes, values = q.numel(), q
    else:
        payload, nonzero = {}, tensor != 0
        dense_bytes, values = tensor.numel() * tensor.element_size(), tensor
    nnz = int(nonzero.sum())
    sparse_bytes = nnz * values.element_size() + (tensor.numel() + 7) // 8
    if tensor.is_floating_point() and tensor.numel() and sparse_bytes < dense_bytes:
        payload[f"{key}.bitmask"] = _pack_mask(nonzero)
        payload[f"{key}.values"] = values[nonzero].contiguous()
        return payload, "bitmask_int8" if int8 else "bitmask"
    if int8:
        payload[f"{key}.qweight"] = q
        return payload, "int8"
    return {key: tensor.clone()}, "dense"


def compact_tensors(state: dict[str, torch.Tensor], quantize: set[str] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a state dict into compact tensors plus the manifest describing them."""
    quantize = quantize or set()
    tensors: dict[str, torch.Tensor] = {}
    manifest: dict[str, Any] = {}
    for key, tensor in state.items():
        int8 = key in quantize and tensor.is_floating_point() and tensor.ndim >= 2
        payload, layout = _encode(key, tensor, int8)
        tensors.update(payload)
        manifest[key] = {"layout": layout, "shape": list(tensor.shape),
                         "dtype": str(tensor.dtype).removeprefix("torch.")}
    return tensors, manifest


def expand_tensors(tensors: dict[str, torch.Tensor], manifest: dict[str, Any]
                   ) -> dict[str, torch.Tensor]:
    """Decode compact tensors back into a plain state dict."""
    state = {}
    for key, info in manifest.items():
        layout, shape, dtype = info["layout"], info["shape"], getattr(torch, info["dtype"])
        if layout == "dense":
            state[key] = tensors[key]
            continue
        if layout in ("int8", "bitmask_int8"):
            q = tensors.get(f"{key}.qweight")
            if layout == "bitmask_int8":
                q = _scatter(tensors, key, shape, torch.int8)
            state[key] = dequantize_rows(q, tensors[f"{key}.scale"], dtype)
        elif layout == "bitmask":
            state[key] = _scatter(tensors, key, shape, dtype)
        else:
            raise UserError(f"unknown compact layout {layout!r} for {key}")
    return state


def _scatter(tensors: dict[str, torch.Tensor], key: str, shape: list[int], dtype: torch.dtype
             ) -> torch.Tensor:
    mask = _unpack_mask(tensors[f"{key}.bitmask"], shape)
    out = torch.zeros(shape, dtype=dtype)
    out[mask] = tensors[f"{key}.values"].to(dtype)
    return out


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from distilprune.quantize.qat import is_qat_prepared

    parametrized = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    require(not parametrized and not is_qat_prepared(model),
            "model still has parametrizations (pruning masks / QAT): finalize them first")
    return model.state_dict()


def _load_source(model_or_dir: nn.Module | str | Path, tokenizer: PreTrainedTokenizerBase | None
                 ) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir, tokenizer
    from distilprune.shrink import load_shrunk

    model = load_shrunk(model_or_dir, auto_class=auto_class_of(model_or_dir))
    return model, tokenizer or load_tokenizer(model_or_dir)


def save_compact(
    model_or_dir: nn.Module | str | Path,
    out_dir: str | Path,
    *,
    int8: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write config, tokenizer and compact weights to ``out_dir`` atomically; return sizes.

    ``model_or_dir`` is a classifier (pass ``tokenizer`` to include it) or a saved model
    directory (its tokenizer is copied). The report has ``compact_bytes``, ``dense_bytes``
    (the plain state dict's size), ``ratio``, ``payload_bytes`` (tensor data without the
    safetensors header), ``sparsity`` (zero fraction of float tensors) and per-layout counts.
    """
    from distilprune.reporting.modelcard import copy_training_metadata, write_model_card

    model, tokenizer = _load_source(model_or_dir, tokenizer)
    state = _plain_state_dict(model)
    tensors, manifest = compact_tensors(state, int8_keys(model) if int8 else None)
    metadata = {"format": FORMAT, "manifest": json.dumps(manifest)}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        compact_bytes = (tmp / WEIGHTS_NAME).stat().st_size
        if not isinstance(model_or_dir, nn.Module):
            copy_training_metadata(model_or_dir, tmp)
        write_model_card(tmp)
    report = _report(state, manifest, compact_bytes, int8)
    report["payload_bytes"] = _nbytes(tensors.values())
    return report


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _report(state: dict[str, torch.Tensor], manifest: dict[str, Any], compact_bytes: int,
            int8: bool) -> dict[str, Any]:
    dense = _nbytes(state.values())
    floats = [t for t in state.values() if t.is_floating_point()]
    zeros = sum(int((t == 0).sum()) for t in floats)
    layouts: dict[str, int] = {}
    for info in manifest.values():
        layouts[info["layout"]] = layouts.get(info["layout"], 0) + 1
    return {"compact_bytes": compact_bytes, "dense_bytes": dense,
            "ratio": dense / max(compact_bytes, 1), "int8": int8,
            "sparsity": zeros / max(sum(t.numel() for t in floats), 1), "layouts": layouts}


def read_compact_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The plain (dequantized) state dict stored in a compact directory."""
    file = Path(path) / WEIGHTS_NAME
    require(file.is_file(), f"no {WEIGHTS_NAME} in {path}: not a compact model directory")
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        require(metadata.get("format") == FORMAT,
                f"{file} is not a {FORMAT} file (format {metadata.get('format')!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return expand_tensors(tensors, json.loads(metadata["manifest"]))


def load_compact(path: str | Path) -> nn.Module:
    """Rebuild the normal Hugging Face model (eval mode; a classifier, token classifier or QA
    model, as saved) from a compact directory."""
    from distilprune.shrink import build_from_config

    state = read_compact_state(path)
    config = load_config(path)
    model = build_from_config(config, auto_class_of(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    require(not missing and not unexpected,
            f"compact weights in {path} do not match the config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}")
    return model.eval()
