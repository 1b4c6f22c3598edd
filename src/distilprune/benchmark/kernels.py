"""Kernel-level timing: one Linear layer, dense int8 engines vs the block-sparse int8 kernel.

Same input ``x [tokens, in]`` and the same fp32 weight for every engine; the sparse kernel's time
includes quantizing the activations (as the dense engines' dynamic quantization does):

* ``torch-fbgemm`` / ``torch-onednn``: ``torch.ao.nn.quantized.dynamic.Linear`` (per-channel).
* ``ort-int8``: a one-MatMul ONNX graph quantized by ONNX Runtime ``quantize_dynamic``
  (``DynamicQuantizeLinear`` + ``MatMulInteger``, per-channel), as ``export --int8`` does.
* ``sparse``: :mod:`distilprune.engine` at each sparsity (1x4 blocks pruned by L2 magnitude).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DENSE_ENGINES = ("torch-fbgemm", "torch-onednn", "ort-int8")


def median_ms(fn: Callable[[], Any], repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def block_prune(weight: torch.Tensor, sparsity: float, block: int = 4) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of 1x``block`` input blocks with the smallest L2 norm."""
    from distilprune.prune.masks import block_magnitude_mask

    if sparsity <= 0:
        return weight.clone()
    return weight * block_magnitude_mask(weight, sparsity, block)


def torch_dynamic_int8(linear: torch.nn.Linear, engine: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A per-channel dynamic int8 Linear on the quantized ``engine`` (fbgemm / onednn)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                  dtype=torch.qint8, inplace=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        torch.backends.quantized.engine = engine
        return module(x)

    return run


def ort_dynamic_int8(linear: torch.nn.Linear, tokens: int, threads: int, folder: Path
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime's dynamic int8 MatMul (per-channel weights) for ``linear``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from distilprune.export.runtime import session_options

    weight = linear.weight.detach().numpy().T.copy()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w"),
         numpy_helper.from_array(linear.bias.detach().numpy(), "b")])
    fp32, int8 = folder / "linear.onnx", folder / "linear-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(int8), session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def time_shape(features: int, out: int, tokens: int, sparsities: Sequence[float], threads: int,
               repeats: int = 30) -> list[dict[str, Any]]:
    """Rows ``{engine, sparsity, ms}`` for one Linear shape at ``threads`` threads."""
    from distilprune.engine.sparse import SparseLinear

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(features * 31 + out)
    x = torch.randn(tokens, features, generator=generator)
    dense = torch.nn.Linear(features, out)
    rows = []
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        for engine in ("fbgemm", "onednn"):
            run = torch_dynamic_int8(dense, engine)
            ms = median_ms(lambda r=run: r(x), repeats)
            rows.append({"engine": f"torch-{engine}", "sparsity": 0.0, "ms": ms})
        run_ort, x_np = ort_dynamic_int8(dense, tokens, threads, Path(tmp)), x.numpy()
        rows.append({"engine": "ort-int8", "sparsity": 0.0, "ms": median_ms(lambda: run_ort(x_np), repeats)})
        for sparsity in sparsities:
            pruned = torch.nn.Linear(features, out)
            pruned.weight.data = block_prune(dense.weight.data, sparsity)
            pruned.bias.data = dense.bias.data.clone()
            layer = SparseLinear.from_linear(pruned)
            ms = median_ms(lambda m=layer: m(x), repeats)
            rows.append({"engine": "sparse", "sparsity": sparsity, "ms": ms,
                         "block_density": layer.packed().block_density})
    for row in rows:
        row.update(features=features, out=out, tokens=tokens, threads=threads)
    return rows
