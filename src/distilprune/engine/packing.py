"""Pack int8 weights into the 1x4 block-sparse layout of the sparse kernels (pure torch).

A weight ``W [out, in]`` is quantized per output row (symmetric int8, ``W ≈ q · scale``; rows
already on an int8 grid, as QAT leaves them, round-trip exactly), padded to a multiple of 4
input columns and cut into 1x4 blocks along the input dimension. Only blocks with a non-zero
weight are kept, row by row (CSR): ``row_ptr``, the block column ``cols``, the four int8 weights
as one little-endian int32 ``vals`` (the VNNI operand), the same weights as int16 pairs
``(w0, w2)`` / ``(w1, w3)`` in ``even`` / ``odd`` (the AVX2 operand), and the row sums ``wsum``
that remove the +128 offset of the unsigned activations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

BLOCK = 4


@dataclass
class PackedWeight:
    """One Linear layer's weight in the block-sparse int8 layout (all tensors contiguous, CPU)."""

    row_ptr: torch.Tensor  # int32 [out + 1]
    cols: torch.Tensor  # int32 [blocks]
    vals: torch.Tensor  # int32 [blocks]
    even: torch.Tensor  # int32 [blocks]
    odd: torch.Tensor  # int32 [blocks]
    wsum: torch.Tensor  # int32 [out]
    wscale: torch.Tensor  # float32 [out]
    in_features: int
    out_features: int

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields by name (what is saved)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    @property
    def block_density(self) -> float:
        """Fraction of 1x4 blocks kept."""
        total = self.out_features * (-(-self.in_features // BLOCK))
        return self.cols.numel() / max(total, 1)

    def dense_int8(self) -> torch.Tensor:
        """The int8 weight ``[out, in]`` back from the blocks (reference and fallback path)."""
        blocks = self.vals.view(torch.int8).view(-1, BLOCK)
        rows = torch.repeat_interleave(torch.arange(self.out_features),
                                       (self.row_ptr[1:] - self.row_ptr[:-1]).long())
        width = -(-self.in_features // BLOCK)
        dense = torch.zeros(self.out_features, width, BLOCK, dtype=torch.int8)
        dense[rows, self.cols.long()] = blocks
        return dense.view(self.out_features, -1)[:, : self.in_features].contiguous()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row symmetric int8 ``(q, scale)`` (exact for weights already on the grid)."""
    from distilprune.export.storage import quantize_rows

    q, scale = quantize_rows(weight.detach().float())
    return q, scale.float().contiguous()


def pack_int8(q: torch.Tensor, scale: torch.Tensor) -> PackedWeight:
    """Pack an int8 weight ``q [out, in]`` with its per-row ``scale`` into non-zero 1x4 blocks."""
    out_features, in_features = q.shape
    padded = F.pad(q, (0, -in_features % BLOCK)).view(out_features, -1, BLOCK)
    keep = padded.ne(0).any(-1)
    counts = keep.sum(1, dtype=torch.int32)
    vals = padded[keep].contiguous().view(torch.int32).view(-1).clone()  # row-major (row, column)
    return PackedWeight(
        row_ptr=torch.cat([torch.zeros(1, dtype=torch.int32), counts.cumsum(0, dtype=torch.int32)]),
        cols=keep.nonzero()[:, 1].to(torch.int32).contiguous(),
        vals=vals,
        **avx2_operands(vals),
        wsum=q.to(torch.int32).sum(1, dtype=torch.int32).contiguous(),
        wscale=scale.float().contiguous(),
        in_features=in_features,
        out_features=out_features,
    )


def pack_linear(weight: torch.Tensor) -> PackedWeight:
    """Quantize and pack a float weight."""
    return pack_int8(*quantize_weight(weight))


def avx2_operands(vals: torch.Tensor) -> dict[str, torch.Tensor]:
    """``even`` = int16 pairs (w0, w2) and ``odd`` = (w1, w3) of each packed block."""
    blocks = vals.view(torch.int8).view(-1, BLOCK).to(torch.int32)

    def pair(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return ((low & 0xFFFF) | (high << 16)).to(torch.int32).contiguous()

    return {"even": pair(blocks[:, 0], blocks[:, 2]), "odd": pair(blocks[:, 1], blocks[:, 3])}
