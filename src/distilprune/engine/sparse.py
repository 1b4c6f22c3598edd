"""The sparse int8 engine: every encoder Linear runs on the block-sparse int8 kernels.

:func:`sparsify` swaps the transformer blocks' ``nn.Linear`` layers (the ones QAT and int8
storage act on) for :class:`SparseLinear`; embeddings, attention, LayerNorm and the classifier
head stay in PyTorch fp32. Activations are quantized per token on the fly, once per input
tensor: the query, key and value projections of a layer share one quantized copy.

A sparse model directory (``export --format sparse``) stores the packed weights in
``model.sparse.safetensors`` (safetensors only; ``__metadata__``: ``format``, ``linears`` and
the compact-storage ``manifest`` of every other tensor, with int8 embeddings), beside
``config.json``, the tokenizer, the training metadata and ``parity.json``.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distilprune.engine.kernels import kernel_status, kernels, warn_fallback
from distilprune.engine.packing import PackedWeight, avx2_operands, pack_linear
from distilprune.errors import require
from distilprune.formats import SPARSE_WEIGHTS as WEIGHTS_NAME

FORMAT = "distilprune-sparse/1"
SAVED_FIELDS = ("row_ptr", "cols", "vals", "wsum", "wscale")


# Attention input projections: called back to back on the same tensor, so they share one
# quantized copy of it (bert/roberta: query/key/value, distilbert: q_lin/..., mpnet: q/k/v).
SHARED_INPUT = re.compile(r"\.(query|key|value|q_lin|k_lin|v_lin|q|k|v)$")


@functools.cache
def _ops() -> ModuleType:
    """The kernel module, looked up once (hot path)."""
    return kernels()


class _QuantCache(threading.local):
    """The input last quantized by a shared-input layer of this thread, with its quantized copy."""

    source: torch.Tensor | None = None
    quantized: list[torch.Tensor] | None = None


_CACHE = _QuantCache()


def quantize_input(x: torch.Tensor, shared: bool = False) -> list[torch.Tensor]:
    """Per-token int8 activations in the kernel layout.

    ``shared``: reuse the copy made for the same tensor object by the previous shared-input
    layer (the cache holds a reference, so the object cannot be another tensor in disguise).
    """
    if shared and _CACHE.source is x:
        return _CACHE.quantized
    quantized = _ops().quantize_tokens(x.reshape(-1, x.shape[-1]).float())
    _CACHE.source, _CACHE.quantized = (x, quantized) if shared else (None, None)
    return quantized


class SparseLinear(nn.Module):
    """A Linear layer computed by the block-sparse int8 kernel (inference only)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None, shared_input: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.shared_input = shared_input
        self.activation = "none"  # "gelu" once fuse_gelu moved the next module's GELU in here
        for name, tensor in packed.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, shared_input: bool = False) -> SparseLinear:
        return cls(pack_linear(linear.weight), linear.bias, shared_input)

    def packed(self) -> PackedWeight:
        fields = {name: getattr(self, name) for name in (*SAVED_FIELDS, "even", "odd")}
        return PackedWeight(**fields, in_features=self.in_features, out_features=self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        xq, xs = quantize_input(x, self.shared_input)
        b = self._buffers  # direct: Module.__getattr__ costs ~0.5 us a buffer on this hot path
        y = _ops().sparse_matmul(xq, xs, x.numel() // self.in_features, b["row_ptr"], b["cols"],
                                 b["vals"], b["even"], b["odd"], b["wsum"], b["wscale"], b["bias"],
                                 activation=self.activation)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        density = self.cols.numel() / max(1, self.out_features * (-(-self.in_features // 4)))
        fused = ", activation=gelu" if self.activation == "gelu" else ""
        return f"in={self.in_features}, out={self.out_features}, block_density={density:.3f}{fused}"


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The transformer blocks' Linear layers (what the engine replaces), by qualified name."""
    from distilprune.quantize.qat import quantizable_linears

    return quantizable_linears(model)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def sparsify(model: nn.Module) -> nn.Module:
    """Run ``model``'s encoder Linears on the sparse kernels (in place, eval mode).

    Without the kernels (no compiler at install, no AVX2) it warns once and quantizes the same
    layers with PyTorch's dense dynamic int8 instead.
    """
    model.eval()
    status = kernel_status()
    linears = encoder_linears(model)
    if not status.available:
        warn_fallback(status.reason)
        return _dense_int8(model, set(linears))
    for name, linear in linears.items():
        _set_module(model, name, SparseLinear.from_linear(linear, bool(SHARED_INPUT.search(name))))
    return _engine_runtime(model)


def _engine_runtime(model: nn.Module) -> nn.Module:
    """The engine's non-Linear parts: int8 attention where it applies, a heap that keeps freed memory."""
    from distilprune.engine.attention import use_int8_attention

    use_int8_attention(model)
    fuse_gelu(model)
    retain_freed_memory()
    return model


# (Linear, activation) attribute pairs of a feed-forward block whose forward applies the
# activation right after the Linear: bert/roberta/mpnet intermediate, distilbert, xlnet.
FFN_ACTIVATIONS = (("dense", "intermediate_act_fn"), ("lin1", "activation"),
                   ("layer_1", "activation_function"))


def _is_exact_gelu(module: nn.Module) -> bool:
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is F.gelu


def fuse_gelu(model: nn.Module) -> int:
    """Move each feed-forward GELU into the epilogue of the SparseLinear before it; returns how many."""
    fused = 0
    for block in list(model.modules()):
        for linear_name, act_name in FFN_ACTIVATIONS:
            linear, act = getattr(block, linear_name, None), getattr(block, act_name, None)
            if isinstance(linear, SparseLinear) and isinstance(act, nn.Module) and _is_exact_gelu(act):
                linear.activation = "gelu"
                setattr(block, act_name, nn.Identity())
                fused += 1
    return fused


@functools.cache
def retain_freed_memory() -> bool:
    """Keep freed activation buffers in the heap instead of unmapping them (glibc only).

    PyTorch's CPU allocator asks malloc for every activation; glibc serves the large ones with
    fresh ``mmap`` pages and unmaps them on free, so each layer pays page faults on megabytes of
    new memory (measured: a third of GELU's time in a 6-layer MiniLM forward). Raising the mmap
    and trim thresholds keeps them in the heap for reuse. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # 32 MiB: glibc's largest mmap threshold on 64-bit; larger buffers are mapped as before.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _dense_int8(model: nn.Module, names: set[str]) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(model, {name: default_dynamic_qconfig for name in names},
                            dtype=torch.qint8)


def save_sparse_weights(model: nn.Module, folder: Path) -> dict[str, Any]:
    """Write ``model.sparse.safetensors`` for a :func:`sparsify`-ed model; returns its summary."""
    from distilprune.export.storage import compact_tensors

    sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    require(bool(sparse), "the model has no sparse layers (is the kernel extension built?)")
    rest = {k: v for k, v in model.state_dict().items()
            if k.rpartition(".")[0] not in sparse}
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    tensors, manifest = compact_tensors(rest, embeddings)
    for name, layer in sparse.items():
        packed = layer.packed()
        for field in SAVED_FIELDS:
            tensors[f"{name}.{field}"] = getattr(packed, field)
        tensors[f"{name}.cols"] = packed.cols.to(torch.int16)  # block columns < 2^15
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias
    linears = {n: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
               for n, m in sparse.items()}
    metadata = {"format": FORMAT, "linears": json.dumps(linears), "manifest": json.dumps(manifest)}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata=metadata)
    blocks = sum(m.cols.numel() for m in sparse.values())
    total = sum(m.out_features * (-(-m.in_features // 4)) for m in sparse.values())
    return {"format": FORMAT, "layers": len(sparse), "block_density": blocks / max(total, 1),
            "size_bytes": (folder / WEIGHTS_NAME).stat().st_size}


def load_sparse(path: str | Path) -> nn.Module:
    """Rebuild the model of a sparse-engine directory (a classifier, token classifier or QA model)
    with its packed layers (eval mode)."""
    from distilprune.export.storage import expand_tensors
    from distilprune.models.base import auto_class_of, load_config
    from distilprune.shrink import build_from_config

    file = Path(path) / WEIGHTS_NAME
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        require(metadata.get("format") == FORMAT,
                f"{file} is not a {FORMAT} file (format {metadata.get('format')!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    linears = json.loads(metadata["linears"])
    model = build_from_config(load_config(path), auto_class_of(path)).eval()
    state = expand_tensors(tensors, json.loads(metadata["manifest"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected = {f"{n}.{p}" for n, info in linears.items() for p in ("weight", "bias")}
    require(not unexpected and set(missing) <= expected,
            f"sparse weights in {path} do not match the config: missing {sorted(missing)[:3]}")
    for name, info in linears.items():
        fields = {f: tensors[f"{name}.{f}"] for f in SAVED_FIELDS}
        fields["cols"] = fields["cols"].to(torch.int32)
        packed = PackedWeight(**fields, **avx2_operands(fields["vals"]),
                              in_features=info["in"], out_features=info["out"])
        layer = SparseLinear(packed, tensors.get(f"{name}.bias"), bool(SHARED_INPUT.search(name)))
        _set_module(model, name, layer)
    if not kernel_status().available:
        warn_fallback(kernel_status().reason)
        return _dense_int8(_densified(model), set(linears))
    return _engine_runtime(model)


def _densified(model: nn.Module) -> nn.Module:
    """Swap SparseLinear layers back to plain Linears holding their dequantized int8 weights."""
    for name, layer in list(model.named_modules()):
        if isinstance(layer, SparseLinear):
            packed = layer.packed()
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            linear.weight.data = packed.dense_int8().float() * packed.wscale[:, None]
            if layer.bias is not None:
                linear.bias.data = layer.bias.clone()
            _set_module(model, name, linear)
    return model
