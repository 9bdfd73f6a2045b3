"""Round-to-nearest (RTN) group quantization: the quantization grid shared by RTN and GPTQ.

A grid is one (scale, zero) pair per output row and group of `group_size` input columns:
code q = clamp(round(w / scale) + zero, 0, 2^bits - 1), dequantized w' = scale * (q - zero).

Asymmetric (default): the grid spans [min(w, 0), max(w, 0)] of the row in that group, as
AutoGPTQ's `Quantizer.find_params` does, so |w - w'| <= scale/2 inside the range. Two deviations,
both so that a saved checkpoint means the same thing to every reader:

- scales are rounded *up* to fp16 (what the checkpoint stores) before the codes are chosen, and
  are at least fp16's smallest normal number, so the stored grid still covers the range and the
  half-step bound holds exactly (rounding to nearest could shrink the top of an 8-bit grid by up
  to 255 fp16 ulps of the scale);
- the zero-point is never 0: the v1 format stores `zero - 1`, which readers that decode per field
  get wrong for 0. A row that would get zero 0 (all its values >= -scale/2) gets zero 1 and the
  scale max(w) / (2^bits - 2) instead, which still covers [min(w), max(w)].

Symmetric (`sym=True`): zero = 2^(bits-1), scale = 2*max|w| / (2^bits - 1).

`rtn_quantize(weight, bits, group_size)` returns the integer codes, fp16 scales, int zeros and
g_idx that `suntool.quant.packing.pack` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from suntool.errors import SuntoolError
from suntool.quant.packing import check_bits

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes and grid of one weight matrix, in the shapes `packing.pack` takes."""

    intweight: torch.Tensor  # int32 [out, in]
    scales: torch.Tensor  # fp16 [n_groups, out]
    zeros: torch.Tensor  # int32 [n_groups, out]
    g_idx: torch.Tensor  # int32 [in]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] these codes represent."""
        import torch

        groups = self.g_idx.to(torch.long)
        scale = self.scales.to(torch.float32)[groups].t()
        zero = self.zeros.to(torch.float32)[groups].t()
        return (self.intweight.to(torch.float32) - zero) * scale


def check_group_size(group_size: int, in_features: int, where: str = "the layer") -> int:
    """Validate `group_size` for a layer with `in_features` inputs; return the effective size."""
    if group_size == -1:
        return in_features
    if group_size <= 0:
        raise SuntoolError(
            f"group_size must be a positive number of input columns or -1 (per channel), got {group_size}"
        )
    if in_features % group_size:
        raise SuntoolError(
            f"group_size={group_size} does not divide in_features={in_features} of {where}; "
            f"choose a divisor of {in_features} (e.g. 32, 64, 128) or -1 for one group per row"
        )
    return group_size


def fp16_ceil(x: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= x (x positive and finite in fp16), returned as fp32."""
    import torch

    h = x.to(torch.float16)
    below = h.to(torch.float32) < x
    bumped = (h.view(torch.int16) + 1).view(torch.float16)  # next fp16 up, for positive values
    return torch.where(below, bumped, h).to(torch.float32)


def find_params(w: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid for each row of `w` [rows, cols]: -> (scale [rows], zero [rows]), fp32 tensors.

    The scales are fp16 values (rounded up); the zero-points are integers in [1, 2^bits - 1].
    """
    import torch

    maxq = (1 << bits) - 1
    tiny = torch.finfo(torch.float16).tiny
    big = torch.finfo(torch.float16).max
    w = w.to(torch.float32)
    xmin = torch.clamp(w.min(dim=1).values, max=0.0)
    xmax = torch.clamp(w.max(dim=1).values, min=0.0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmax = torch.where(xmax == 0, torch.ones_like(xmax), xmax)
        scale = fp16_ceil((2 * xmax / maxq).clamp(tiny, big))
        zero = torch.full_like(scale, float((maxq + 1) // 2))
        return scale, zero
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both_zero, torch.ones_like(xmax), xmax)
    scale = fp16_ceil(((xmax - xmin) / maxq).clamp(tiny, big))
    zero = torch.round(-xmin / scale)
    lifted = zero < 1  # zero-point 0 is not portable in the v1 format: use 1 and widen the top
    if bool(lifted.any()):
        lifted_scale = fp16_ceil((xmax / (maxq - 1)).clamp(tiny, big))
        scale = torch.where(lifted, lifted_scale, scale)
        zero = torch.where(lifted, torch.ones_like(zero), zero)
    return scale, zero.clamp(1, maxq)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes for `w` [rows, cols] on the grid (`scale`, `zero` [rows]); fp32 tensor of integers."""
    import torch

    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, maxq)


def rtn_quantize(
    weight: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = False
) -> QuantizedWeight:
    """Round-to-nearest quantization of `weight` [out, in] in groups of `group_size` input columns."""
    import torch

    check_bits(bits)
    out_features, in_features = weight.shape
    size = check_group_size(group_size, in_features)
    w = weight.detach().to(torch.float32)
    n_groups = in_features // size
    codes = torch.empty(out_features, in_features, dtype=torch.int32, device=w.device)
    scales = torch.empty(n_groups, out_features, dtype=torch.float16, device=w.device)
    zeros = torch.empty(n_groups, out_features, dtype=torch.int32, device=w.device)
    for g in range(n_groups):
        block = w[:, g * size : (g + 1) * size]
        scale, zero = find_params(block, bits, sym)
        codes[:, g * size : (g + 1) * size] = quantize_codes(block, scale, zero, bits).to(torch.int32)
        scales[g] = scale.to(torch.float16)
        zeros[g] = zero.to(torch.int32)
    g_idx = (torch.arange(in_features, device=w.device) // size).to(torch.int32)
    return QuantizedWeight(intweight=codes, scales=scales, zeros=zeros, g_idx=g_idx)
